"""``quantize: {placement: onnxruntime}``: Q/DQ placed where ONNX Runtime's CPU kernels run
INT8.

ONNX Runtime runs a QDQ graph in integer only where its graph transformers (the QDQ selector
actions of ``qdq_selector_action_transformer.cc``) find a whole node group, DQ on every input
and Q on the output, and replace it with one kernel: DQ -> Conv -> Q is QLinearConv, DQ ->
MatMul -> Q QLinearMatMul (no Q: MatMulIntegerToFloat), DQ -> Gemm QGemm, DQ -> Add/Mul -> Q
QLinearAdd/QLinearMul, Concat QLinearConcat, (Global)AveragePool QLinear(Global)AveragePool;
data movement between a DQ and a Q of the same scale runs on the quantized values (the pair is
dropped: MaxPool, Reshape, Transpose, ...); and a Relu (or a Clip from 0) before a Q whose zero
point is the type's minimum is removed (``ReluQuantFusion``, ``ClipQuantFusion``). TensorRT's
placement (no Q after a Conv's output, so the Conv fuses its bias, activation and residual)
forms none of these groups, so on ONNX Runtime it runs every op in float behind a DQ.

So this placement quantizes the outputs of the ops it quantizes as well as their inputs
(after a following Relu, over [0, amax] with zero point 0 so that the Relu folds), keeps a
residual Add of two quantized branches, Concat and pooling in the quantized region, gives data
movement its input's scale, and quantizes Conv and Gemm biases to INT32 at the input scale
times the weight scale, as ``onnxruntime.quantization.quantize_static`` writes them. A MatMul's
output is quantized only for a reader that continues the region (else MatMulIntegerToFloat,
which also takes the bias Add), and Adds or Muls with a constant operand (biases, GELU's
scales) stay float: on all-MiniLM-L6-v2 quantizing them cost accuracy and time. Activations
are UINT8 (``qdq``: ONNX Runtime's x86 kernels are U8S8), weights INT8 symmetric per channel,
and every reader gets its own DQ (``dedicate``). A node left in float (``exclude``, or kept by
the automatic search) gets no Q on its output either: ONNX Runtime quantizes a float weight
itself between a DQ and a Q (``WeightBiasQuantization``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from .fusion.pattern import constant_value
from .graph_tools import is_float
from .qdq_plan import Plan, Site, insert_qdq

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""DQ on every input, Q on the output: QLinearConv, QLinearConvTranspose, QGemm, QLinearMatMul."""
REGION_OPS = ("Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool")
"""Ops with their own output scale that ONNX Runtime runs quantized inside a quantized region
(QLinearAdd, QLinearMul, QLinearConcat, QLinearAveragePool, QLinearGlobalAveragePool)."""
MOVING_OPS = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice")
"""Ops that only move or select values: ONNX Runtime drops a DQ before and a Q after one of the
same scale and zero point, running it on the INT8 values (``DropQDQNodesRules``)."""
INT8_MAX, UINT8_MAX, UINT8_ZERO = 127, 255, 128


def plan(graph: gs.Graph, ops: Sequence[str], skipped: set[str], per_channel: bool) -> Plan:
    """Where Q/DQ go for ONNX Runtime's CPU kernels (the module's docstring: each rule is one
    of its QDQ node groups). ``ops``: the compute ops to quantize; ``skipped``: nodes left in
    float (exclusions, shape subgraphs)."""
    found = Plan(runtime="onnxruntime")
    outputs = {t.name for t in graph.outputs}
    quantized: set[str] = set()  # tensors that carry a Q/DQ for every consumer
    pending: dict[str, str] = {}  # a MatMul/Gemm output -> its node, if a consumer needs it
    # ONNX Runtime quantizes a float weight itself between a DQ and a Q
    # (WeightBiasQuantization): a Conv left in float must not have its output quantized.
    floating = {
        _folded_output(node, skipped)[0].name
        for node in graph.nodes
        if node.name in skipped and node.op in COMPUTE_OPS and node.outputs
    }

    def output_site(node: gs.Node, always: bool) -> None:
        tensor, unsigned = _folded_output(node, skipped)
        if tensor is None or tensor.name in outputs or not tensor.outputs:
            return
        found.producers[tensor.name] = node.name
        if unsigned:
            found.unsigned.add(tensor.name)
        if always:
            found.sites.append(Site(node.name, 0, tensor.name, consumers=True))
            quantized.add(tensor.name)
        else:
            pending[tensor.name] = node.name

    def reaches(tensor: gs.Tensor) -> bool:
        """``tensor`` can reach its consumers quantized."""
        return tensor.name not in floating and (tensor.name in quantized or tensor.name in pending)

    def carries(tensor: gs.Tensor) -> bool:
        """``tensor`` reaches its consumers quantized (a pending output is quantized now)."""
        if tensor.name in pending:
            found.sites.append(Site(pending.pop(tensor.name), 0, tensor.name, consumers=True))
            quantized.add(tensor.name)
        return tensor.name in quantized

    for node in graph.nodes:
        if node.name in skipped:
            continue
        if node.op in ops:
            sites = _compute_sites(node, per_channel)
            if not sites or any(s.tensor in floating for s in sites):
                continue
            for site in sites:
                if not site.constant and site.tensor in pending:
                    carries(node.inputs[site.slot])
                producer = node.inputs[site.slot].inputs
                if not site.constant and producer and _non_negative(producer[0]):
                    found.unsigned.add(site.tensor)
            found.sites += sites
            found.units.append(node.name)
            found.reasons[node.name] = f"{node.op}: inputs, output and bias (QLinear{node.op})"
            # A Conv's output Q forms QLinearConv; a MatMul or Gemm without one still runs in
            # integer (MatMulIntegerToFloat, QGemm with a float output), so its output is
            # quantized only for a consumer that continues the region.
            output_site(node, always=node.op in ("Conv", "ConvTranspose"))
        elif node.op in REGION_OPS:
            variables = [t for t in node.inputs if isinstance(t, gs.Variable) and is_float(t)]
            if not variables or len(variables) != len(node.inputs):
                continue  # a constant operand (a bias, a scale) would be rounded to INT8 too
            # Add and Mul join only when every input is quantized already (a residual of two
            # quantized branches; a float residual or GELU branch stays float), Concat and
            # pooling when one is.
            joins = all if node.op in ("Add", "Mul") else any
            if not joins(reaches(t) for t in variables):
                continue
            for tensor in variables:
                carries(tensor)
            for slot, tensor in enumerate(node.inputs):
                found.sites.append(Site(node.name, slot, tensor.name))
            found.units.append(node.name)
            found.reasons[node.name] = f"{node.op}: in a quantized region (QLinear{node.op})"
            if "Pool" in node.op and node.inputs[0].name in found.unsigned:
                found.unsigned.add(node.outputs[0].name)
            elif node.op == "Concat" and all(t.name in found.unsigned for t in node.inputs):
                found.unsigned.add(node.outputs[0].name)
            output_site(node, always=True)
        elif node.op in MOVING_OPS and node.inputs and node.outputs:
            out = node.outputs[0]
            if out.name in outputs or not is_float(out) or not carries(node.inputs[0]):
                continue
            source = node.inputs[0].name
            found.alias[out.name] = found.alias.get(source, source)
            if source in found.producers:  # kept in float with the unit that quantizes its input
                found.producers[out.name] = found.producers[source]
            if source in found.unsigned:
                found.unsigned.add(out.name)
            found.sites.append(Site(node.name, 0, out.name, consumers=True))
            quantized.add(out.name)
    return found


def _folded_output(node: gs.Node, skipped: set[str]) -> tuple[gs.Tensor | None, bool]:
    """The tensor whose Q ONNX Runtime fuses into ``node``: its output, or the output of the
    Relu (or Clip from 0) that alone reads it, which the Q's zero point -128 folds away; and
    whether it is never negative."""
    if not node.outputs:
        return None, False
    out = node.outputs[0]
    if len(out.outputs) == 1:
        follower = out.outputs[0]
        if follower.name not in skipped and _clips_at_zero(follower):
            return follower.outputs[0], True
    return out, False


def _non_negative(node: gs.Node) -> bool:
    """``node``'s output is never negative (a Softmax's probabilities read by a MatMul)."""
    return node.op in ("Softmax", "Sigmoid") or _clips_at_zero(node)


def _clips_at_zero(node: gs.Node) -> bool:
    if node.op == "Relu":
        return True
    if node.op != "Clip" or len(node.inputs) < 2:
        return False
    low = constant_value(node.inputs[1])
    return low is not None and low.size == 1 and float(low) == 0.0


def _compute_sites(node: gs.Node, per_channel: bool) -> list[Site]:
    """DQ on the data and weight inputs (weights per output channel: Conv axis 0,
    ConvTranspose axis 1, Gemm's N, MatMul's last axis) and the bias (INT32), as
    QLinearConv/QGemm/QLinearMatMul read them; an input that is not FP32, or already
    dequantized, leaves the node in float."""
    sites = []
    for slot, tensor in enumerate(node.inputs[:3]):
        constant = isinstance(tensor, gs.Constant)
        if not is_float(tensor) or (constant and tensor.dtype != np.float32):
            return []
        if tensor.inputs and tensor.inputs[0].op == "DequantizeLinear":
            return []
        if slot == 2:
            if not constant or node.op not in ("Conv", "Gemm") or len(tensor.shape) != 1:
                return []  # a computed or broadcast bias: QLinearConv/QGemm read a vector
            sites.append(Site(node.name, 2, tensor.name, 0, True, bias=True))
            continue
        axis = None
        if constant and slot == 1 and per_channel:
            rank = len(tensor.shape)
            axis = {
                "Conv": 0,
                "ConvTranspose": 1,
                "Gemm": 0 if int(node.attrs.get("transB", 0)) else 1,
                "MatMul": rank - 1,
            }[node.op]
            if node.op == "ConvTranspose" and int(node.attrs.get("group", 1)) != 1:
                axis = None
            if axis is not None and not 0 <= axis < rank:
                axis = None
        sites.append(Site(node.name, slot, tensor.name, axis, constant))
    return sites


def quantized_bias(graph: gs.Graph, node: gs.Node, tensor: gs.Constant) -> gs.Variable | None:
    """``tensor`` (a Conv's or Gemm's bias) as INT32 behind a DequantizeLinear whose scale is
    the input's scale times the weight's (per channel), zero point 0: the bias QLinearConv and
    QGemm add in their INT32 accumulator. None when the input or the weight is not dequantized
    (the bias then stays float and the node runs in float)."""
    scales = [_dq_scale(t) for t in node.inputs[:2]]
    if any(s is None for s in scales):
        return None
    scale = (scales[0] * scales[1]).astype(np.float32).reshape(-1)
    values = np.asarray(constant_value(tensor), np.float32)
    if scale.size not in (1, values.size):
        return None
    scale = np.broadcast_to(scale, values.shape).copy()
    bound = np.iinfo(np.int32)
    quantized = np.clip(np.rint(values / scale), bound.min, bound.max).astype(np.int32)
    name = f"{tensor.name}_{node.name}" if len(tensor.outputs) > 1 else tensor.name
    out = gs.Variable(f"{name}_dequantized", dtype=np.float32, shape=list(values.shape))
    graph.nodes.append(
        gs.Node(
            "DequantizeLinear",
            f"{name}_DequantizeLinear",
            {"axis": 0},
            inputs=[
                gs.Constant(f"{name}_quantized", quantized),
                gs.Constant(f"{name}_scale", scale),
                gs.Constant(f"{name}_zero_point", np.zeros(values.shape, np.int32)),
            ],
            outputs=[out],
        )
    )
    return out


def _dq_scale(tensor: gs.Tensor) -> np.ndarray | None:
    if not tensor.inputs or tensor.inputs[0].op != "DequantizeLinear":
        return None
    value = constant_value(tensor.inputs[0].inputs[1])
    return None if value is None else np.asarray(value, np.float32)


def dedicate(graph: gs.Graph) -> None:
    """One DequantizeLinear per consumer: ONNX Runtime's selectors take a DQ into a node
    group only when that node is its one consumer, so a shared DQ (a block's input read by
    its first Conv and by the residual Add) leaves every reader in float."""
    for node in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
        out = node.outputs[0]
        for index, consumer in enumerate(list(out.outputs)[1:], start=1):
            copy = gs.Variable(f"{out.name}_{index}", dtype=out.dtype, shape=out.shape)
            graph.nodes.append(
                gs.Node(
                    node.op,
                    f"{node.name}_{index}",
                    dict(node.attrs),
                    inputs=list(node.inputs),
                    outputs=[copy],
                )
            )
            for slot, read in enumerate(consumer.inputs):
                if read is out:
                    consumer.inputs[slot] = copy


def qdq(graph: gs.Graph, tensor: gs.Tensor, amax: float, unsigned: bool) -> gs.Variable:
    """Q/DQ of an activation in UINT8, as ONNX Runtime's x86 kernels read activations (U8S8
    with INT8 weights; an INT8 activation is converted to UINT8 by ``QDQS8ToU8Transformer``
    only where its Q feeds one DQ, so a tensor read twice would leave both readers float):
    zero point 128 and step amax / 127, or for a never-negative tensor zero point 0 and step
    amax / 255, the Relu before it then folded."""
    step, zero_point = (amax / UINT8_MAX, 0) if unsigned else (amax / INT8_MAX, UINT8_ZERO)
    return insert_qdq(graph, tensor, step, np.array(zero_point, dtype=np.uint8))
