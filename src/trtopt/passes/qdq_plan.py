"""Where a Q/DQ placement puts quantization: the sites and units every placement (TensorRT's,
ONNX Runtime's; trtopt.passes.quantize, trtopt.passes.ort_placement) hands the quantize pass,
which calibrates, searches and rewrites them the same way whichever placed them; and the Q/DQ
pair both write."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..lazy import lazy_import

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs
else:
    np = lazy_import("numpy", globals())
    gs = lazy_import("onnx_graphsurgeon", globals())


@dataclass
class Site:
    """One quantized input: a tensor feeding a node's input slot."""

    node: str
    slot: int
    tensor: str
    weight_axis: int | None = None
    """Constant weights: the per-channel axis (None: per-tensor)."""
    constant: bool = False
    block_size: int | None = None
    """INT4 weights: the block along ``weight_axis`` (K)."""
    consumers: bool = False
    """The tensor is quantized for every consumer, not one slot: the Q after an op's output
    that ONNX Runtime fuses into a QLinear op (``slot`` unused)."""
    bias: bool = False
    """An INT32 bias, scaled by the node's input and weight scales (ONNX Runtime's
    QLinearConv and QGemm read the bias quantized)."""


@dataclass
class Plan:
    sites: list[Site] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    """Nodes that receive Q/DQ (what the auto search may keep in float)."""
    reasons: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """Nodes the quantized type's rules leave in float, with the rule and the reason."""
    alias: dict[str, str] = field(default_factory=dict)
    """Tensor -> the tensor whose scale and zero point it takes (data movement ONNX Runtime
    runs on quantized values only when its input and output scales are equal)."""
    unsigned: set[str] = field(default_factory=set)
    """Tensors that are never negative (after a Relu): quantized over [0, amax] with the
    type's lowest value as zero point, which lets ONNX Runtime fold the Relu into the Q."""
    producers: dict[str, str] = field(default_factory=dict)
    """Tensor -> the unit whose output it is: a unit kept in float leaves it unquantized
    (ONNX Runtime would quantize a float Conv's weight between a DQ and a Q itself)."""
    runtime: Literal["tensorrt", "onnxruntime"] = "tensorrt"
    """Whose kernels the plan is for: ONNX Runtime's take UINT8 activations and one
    DequantizeLinear per consumer (trtopt.passes.ort_placement)."""

    def activations(self) -> list[str]:
        """The tensors whose ranges calibration measures (an alias takes its source's)."""
        return sorted({self.alias.get(s.tensor, s.tensor) for s in self.sites if not s.constant})

    def only(self, names: set[str]) -> Plan:
        """The plan restricted to the sites of ``names`` (one unit measured alone)."""
        sites = [s for s in self.sites if s.node in names]
        return Plan(
            sites=sites,
            alias=self.alias,
            unsigned=self.unsigned,
            producers=self.producers,
            runtime=self.runtime,
        )


def insert_qdq(graph: gs.Graph, tensor: gs.Tensor, step: float, zero_point: Any) -> gs.Variable:
    """A QuantizeLinear -> DequantizeLinear pair on ``tensor`` (one scale ``step``, the zero
    point a numpy scalar of the quantized type), appended to ``graph``; the dequantized tensor,
    for the readers to take."""
    name = tensor.name
    scale = gs.Constant(f"{name}_scale", np.array(step, dtype=np.float32))
    zero = gs.Constant(f"{name}_zero_point", np.asarray(zero_point))
    q_out = gs.Variable(f"{name}_quantized", dtype=zero.values.dtype, shape=tensor.shape)
    dq_out = gs.Variable(f"{name}_dequantized", dtype=np.float32, shape=tensor.shape)
    q = gs.Node("QuantizeLinear", f"{name}_QuantizeLinear", inputs=[tensor, scale, zero])
    q.outputs = [q_out]
    dq = gs.Node("DequantizeLinear", f"{name}_DequantizeLinear", inputs=[q_out, scale, zero])
    dq.outputs = [dq_out]
    graph.nodes += [q, dq]
    return dq_out
