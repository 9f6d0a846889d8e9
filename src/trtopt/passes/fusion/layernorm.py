"""``fuse-layernorm``: the decomposed layer norm of both torch exporters -> LayerNormalization."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import OpsetRaisingFusion
from .edit import const, replace_root
from .pattern import Const, Match, OneOf, Op, Opt, Var

MIN_OPSET = 17

_MEAN = Op("ReduceMean", Var("x"), Opt(Const("axes1")), name="mean")
_CENTERED = Op("Sub", Var("x"), _MEAN, name="sub")
_SQUARE = OneOf(Op("Pow", _CENTERED, Const(value=2.0)), Op("Mul", _CENTERED, _CENTERED))
_VAR = Op("ReduceMean", _SQUARE, Opt(Const("axes2")), name="var")
_STD = Op("Sqrt", Op("Add", _VAR, Const("eps")))
_NORMED = OneOf(
    Op("Div", _CENTERED, _STD, name="div"),
    Op("Mul", _CENTERED, Op("Reciprocal", _STD), name="div"),
)
_SCALED = Op("Mul", _NORMED, Const("gamma"), name="scale")
PATTERN = OneOf(Op("Add", _SCALED, Const("beta")), _SCALED, _NORMED)


def _axes(match: Match, key: str, node: gs.Node) -> list[int] | None:
    if key in match:
        return sorted(int(a) for a in match.value(key).reshape(-1))
    axes = node.attrs.get("axes")
    return None if axes is None else sorted(int(a) for a in axes)


@register_pass("fuse-layernorm")
class FuseLayerNorm(OpsetRaisingFusion):
    """Fuse the decomposed layer norm into LayerNormalization (needs opset 17).

    ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div(/Mul/Add), with Mul(d, d) for Pow and
    Mul(Reciprocal) for Div as exporters write them. Below opset 17 it is skipped unless
    ``upgrade_opset``."""

    pattern = PATTERN
    min_opset = MIN_OPSET
    hint_ops = frozenset({"ReduceMean"})

    def _normalized(self, match: Match) -> tuple[int, list[int]] | str:
        """(first axis, normalized dims) of a matched layer norm, or why it is not one."""
        mean, var = match["mean"], match["var"]
        axes = _axes(match, "axes1", mean)
        if axes is None or axes != _axes(match, "axes2", var):
            return "the two ReduceMeans reduce different (or all) axes"
        if any(int(n.attrs.get("keepdims", 1)) != 1 for n in (mean, var)):
            return "a ReduceMean drops its reduced axes"
        shape = self.shape(match["x"])
        rank = None if shape is None else len(shape)
        if rank is None and any(a >= 0 for a in axes):
            return f"rank of '{match['x'].name}' is unknown"
        if rank is not None:
            axes = sorted(a % rank for a in axes)
            axes = [a - rank for a in axes]
        if axes != list(range(-len(axes), 0)):
            return f"axes {axes} are not the trailing axes"
        dims = [] if shape is None else list(shape[len(shape) - len(axes) :])
        return axes[0], dims

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        found = self._normalized(match)
        if isinstance(found, str):
            return found
        axis, dims = found
        # ONNX Runtime: "Size of X.shape[axis:] must be at least 1, got 0"
        if 0 in dims or any(match.value(k).size == 0 for k in ("gamma", "beta") if k in match):
            return f"the normalized dims {dims} are empty (LayerNormalization needs an element)"
        if match.value("eps").size != 1:
            return "epsilon is not a scalar"
        for key in ("gamma", "beta"):
            if key in match and self._param(match.value(key), -axis, dims) is None:
                return f"{key} of shape {match.value(key).shape} is not per-element of {dims}"
        if "gamma" not in match and not all(isinstance(d, int) for d in dims):
            return "no scale and the normalized dims are not static"
        return None

    @staticmethod
    def _param(values: np.ndarray, k: int, dims: list) -> np.ndarray | None:
        """A scale/bias as an array of the normalized shape, when it is one."""
        squeezed = values.reshape(values.shape[max(0, values.ndim - k) :])
        if values.size != squeezed.size:
            return None
        static = [d for d in dims if isinstance(d, int)]
        if len(static) == k and len(dims) == k:
            try:
                return np.broadcast_to(squeezed, tuple(static)).copy()
            except ValueError:
                return None
        return squeezed if squeezed.ndim == k and 1 not in squeezed.shape[:-1] else None

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        found = self._normalized(match)
        assert not isinstance(found, str)
        axis, dims = found
        x = match["x"]
        dtype = match.value("gamma").dtype if "gamma" in match else np.float32
        if "gamma" in match:
            gamma = self._param(match.value("gamma"), -axis, dims)
        else:
            gamma = np.ones([int(d) for d in dims], dtype=dtype)
        name = match["mean"].name
        inputs = [x, const(graph, f"{name}_scale", gamma.astype(dtype))]
        if "beta" in match:
            beta = self._param(match.value("beta"), -axis, dims)
            inputs.append(const(graph, f"{name}_bias", beta.astype(dtype)))
        eps = float(match.value("eps").reshape(-1)[0])
        attrs = {"axis": axis, "epsilon": eps}
        replace_root(graph, match, "LayerNormalization", inputs, attrs, name=name)
