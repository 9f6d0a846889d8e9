"""``eliminate-casts``: Cast chains that are exact become one Cast; no-op Casts vanish."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import Fusion
from .edit import bypass_refusal, replace_by, replace_root
from .pattern import Match, OneOf, Op, Var

PATTERN = OneOf(
    Op("Cast", Op("Cast", Var("x"), name="first"), name="second"),
    Op("Cast", Var("x"), name="second"),
)

# Types that hold every value of the key type exactly (so casting through them loses nothing).
_F, _I = ("float16", "float32", "float64"), ("int16", "int32", "int64")
_EXACT = {
    "bool": {"bool", "int8", "uint8", "uint16", "uint32", "uint64", "bfloat16", *_F, *_I},
    "int8": {"int8", *_I, *_F},
    "uint8": {"uint8", "uint16", "uint32", "uint64", *_I, *_F},
    "int16": {"int16", "int32", "int64", "float32", "float64"},
    "uint16": {"uint16", "uint32", "uint64", "int32", "int64", "float32", "float64"},
    "int32": {"int32", "int64", "float64"},
    "uint32": {"uint32", "uint64", "int64", "float64"},
    "int64": {"int64"},
    "uint64": {"uint64"},
    "float16": {"float16", "float32", "float64"},
    "bfloat16": {"bfloat16", "float32", "float64"},
    "float32": {"float32", "float64"},
    "float64": {"float64"},
}


def _to(node: gs.Node) -> str | None:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))).name
    except Exception:  # float8 and other types numpy cannot name: left alone
        return None


@register_pass("eliminate-casts")
class EliminateCasts(Fusion):
    """Merge exact Cast(Cast(x)) chains into one Cast; remove Casts to x's own type (any opset).

    A chain is exact when the middle type holds every value of x's type."""

    pattern = PATTERN

    def _source(self, match: Match) -> str | None:
        dtype = self.dtype(match["x"])
        return None if dtype is None else np.dtype(dtype).name

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        source, target = self._source(match), _to(match["second"])
        if source is None or target is None:
            return f"type of '{match['x'].name}' or of the Cast target is unknown"
        if "first" in match:
            middle = _to(match["first"])
            if middle is None or middle not in _EXACT.get(source, set()):
                return f"the cast {source} -> {middle} is not exact"
        elif source != target:
            return f"a single Cast {source} -> {target} changes the type"
        if source == target:
            return bypass_refusal(graph, match["x"], match.root.outputs[0])
        return None

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        if self._source(match) == _to(match["second"]):
            replace_by(graph, match, match["x"])
        else:
            attrs = dict(match["second"].attrs)
            replace_root(graph, match, "Cast", [match["x"]], attrs)
