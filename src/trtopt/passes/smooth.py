"""``smooth``: SmoothQuant (Xiao et al., 2023) before INT8: the outlier channels of a matrix
product's activation move into its weights, where per-channel quantization absorbs them.

An activation X read by matrix products X @ W (constant W [K, N]) is replaced by X / s and
every W by s * W (row j scaled by s_j), which computes the same product. With

    s_j = max|X_j| ^ alpha / max|W_j| ^ (1 - alpha)

(max|X_j| over the calibration data, max|W_j| over row j of every weight reading X) a channel
whose activations run a hundred times wider than the others no longer sets the per-tensor
INT8 scale of X, and the weights, quantized per output channel, take the difference in their
stride. The paper's placement: where X is a LayerNormalization's output read only by the
products, 1/s folds into its scale and bias; elsewhere (a residual reads it too, or no
normalization writes it) one Mul by 1/s feeds the products.

The pass keeps what the model computes (it is proven like any exact pass); ``quantize`` after
it calibrates and quantizes the smoothed graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from ..lazy import lazy_import
from .base import Pass, PassContext, PassOptions, PassResult
from .registry import register_pass

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from ..calibration import collect
    from .fusion import pattern
else:
    np = lazy_import("numpy", globals())
    gs = lazy_import("onnx_graphsurgeon", globals())
    collect = lazy_import("trtopt.calibration.collect", globals())
    pattern = lazy_import("trtopt.passes.fusion.pattern", globals())

PRODUCTS = ("MatMul", "Gemm")
"""Matrix products whose second input may be a constant weight [K, N] (Gemm: transB)."""


@register_pass("smooth")
class Smooth(Pass):
    """Move activation outliers into the weights of matrix products before INT8 (SmoothQuant)."""

    class Options(PassOptions):
        alpha: Annotated[float, Field(ge=0, le=1)] = 0.8
        """How much of an activation's channel range moves into the weights, from 0 to 1. On
        all-MiniLM-L6-v2, INT8 after 0.8 errs 0.09 (0.9: 0.10, 0.65: 0.14, none: 0.23, the
        paper's 0.5: 0.35); the best value is the model's (benchmarks/README.md)."""
        min_channels: Annotated[int, Field(ge=2)] = 16
        """Activations with fewer channels are left alone: too few to have outliers."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        groups = _groups(graph, self.options.min_channels)
        if not groups:
            ctx.details["activations"] = {}
            return PassResult(graph, modified=False)
        data = ctx.calibration_data("smooth", "channel ranges measured")
        amax = {name: np.zeros(members[0].channels) for name, members in groups.items()}

        def observe(name: str, array: np.ndarray) -> None:
            channels = np.abs(np.asarray(array, np.float64)).reshape(-1, amax[name].size)
            np.maximum(amax[name], channels.max(axis=0), out=amax[name])

        reference, weights = collect.split_graph(graph)
        feeds = collect.collect(reference, data, sorted(groups), observe, weights=weights)
        del reference, weights
        found = {}
        for name, members in groups.items():
            rows = [_rows(member) for member in members]
            scale = _scale(amax[name], rows, self.options.alpha)
            where = _apply(graph, graph.tensors()[name], members, rows, scale)
            smoothed = amax[name] / scale
            found[name] = {
                "nodes": [m.node.name for m in members],
                "into": where,
                "channel_spread": [_spread(amax[name]), _spread(smoothed)],
            }
        graph.cleanup().toposort()
        ctx.details.update(
            {"alpha": self.options.alpha, "feeds": feeds, "data": data.describe()},
            activations=found,
        )
        return PassResult(graph, modified=True)


@dataclass
class _Member:
    """A matrix product reading the activation, and its constant weight (read as rows [K, N],
    transposed for a Gemm with transB)."""

    node: gs.Node
    weight: gs.Constant
    transposed: bool

    @property
    def channels(self) -> int:
        """K, the activation's channels the weight reads (from its shape, not its values)."""
        return int(self.weight.shape[1 if self.transposed else 0])


def _rows(member: _Member) -> np.ndarray:
    values = np.asarray(pattern.constant_value(member.weight), np.float32)
    return values.T if member.transposed else values


def _groups(graph: gs.Graph, min_channels: int) -> dict[str, list[_Member]]:
    """Per activation name: the float32 products reading it as [.., K] with a constant 2-D
    weight; an activation is skipped when any product reads it otherwise (transposed, or as
    the weight)."""
    found: dict[str, list[_Member]] = {}
    refused: set[str] = set()
    for node in graph.nodes:
        if node.op not in PRODUCTS or len(node.inputs) < 2:
            continue
        activation, weight = node.inputs[0], node.inputs[1]
        if isinstance(activation, gs.Constant):
            continue
        usable = (
            isinstance(weight, gs.Constant)
            and weight.dtype == np.float32
            and len(weight.shape) == 2
            and not (node.op == "Gemm" and int(node.attrs.get("transA", 0)))
        )
        if not usable:
            refused.add(activation.name)
            continue
        transposed = node.op == "Gemm" and bool(int(node.attrs.get("transB", 0)))
        found.setdefault(activation.name, []).append(_Member(node, weight, transposed))
    for name, members in list(found.items()):
        channels = {m.channels for m in members}
        if name in refused or len(channels) != 1 or channels.pop() < min_channels:
            del found[name]
    return found


def _scale(amax: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel scale; 1 where a channel is never active or has no weight."""
    wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0).astype(np.float64)
    live = (amax > 0) & (wmax > 0)
    scale = np.ones_like(amax)
    scale[live] = amax[live] ** alpha / wmax[live] ** (1 - alpha)
    return scale


def _spread(amax: np.ndarray) -> float:
    """The widest channel's range over the median channel's (how far outliers stand out)."""
    median = float(np.median(amax))
    return float(amax.max() / median) if median > 0 else float("inf")


def _apply(
    graph: gs.Graph,
    activation: gs.Tensor,
    members: list[_Member],
    rows: list[np.ndarray],
    scale: Any,
) -> str:
    """Scale the weights' ``rows`` (each member's, as [K, N]) and divide the activation; where
    the division went (into the LayerNormalization that writes it only where nothing else
    reads it: graphsurgeon lists a node in an If or Loop body that reads it as one of its
    readers too)."""
    made: dict[int, gs.Constant] = {}
    for member, weight_rows in zip(members, rows):
        if id(member.weight) not in made:
            scaled = weight_rows * scale[:, None].astype(np.float32)
            values = scaled.T if member.transposed else scaled
            # A new constant: the old one may be read elsewhere (a tied weight).
            name = f"{member.weight.name}_smoothed_{activation.name}"
            made[id(member.weight)] = gs.Constant(name, values)
        member.node.inputs[1] = made[id(member.weight)]
    inverse = (1.0 / scale).astype(np.float32)
    producer = activation.inputs[0] if len(activation.inputs) == 1 else None
    readers = {id(m.node) for m in members}
    alone = all(id(node) in readers for node in activation.outputs)
    if (
        producer is not None
        and producer.op == "LayerNormalization"
        and alone
        and activation not in graph.outputs
        and len(producer.outputs) == 1
        and all(isinstance(t, gs.Constant) for t in producer.inputs[1:])
    ):
        for index, tensor in enumerate(producer.inputs[1:], start=1):
            folded = np.asarray(pattern.constant_value(tensor), np.float32) * inverse
            producer.inputs[index] = gs.Constant(f"{tensor.name}_smoothed_{producer.name}", folded)
        return producer.name
    smoothed = gs.Variable(f"{activation.name}_smoothed", np.float32, activation.shape)
    divisor = gs.Constant(f"{activation.name}_smoothing", inverse)
    mul = gs.Node("Mul", f"{activation.name}_smooth", inputs=[activation, divisor])
    mul.outputs = [smoothed]
    graph.nodes.append(mul)
    for member in members:
        member.node.inputs[0] = smoothed
    return mul.name
