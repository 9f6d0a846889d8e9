"""``eliminate-noop-arith``: x + 0, x - 0, x * 1, x / 1, x and true, x or false vanish."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import Fusion
from .edit import bypass_refusal, replace_by
from .pattern import Const, Match, OneOf, Op, Var

PATTERN = OneOf(
    Op("Add", Var("x"), Const("zero", value=0.0)),
    Op("Sub", Var("x"), Const("zero", value=0.0)),
    Op("Mul", Var("x"), Const("one", value=1.0)),
    Op("Div", Var("x"), Const("one", value=1.0)),
    Op("And", Var("x"), Const("one", value=1.0)),
    Op("Or", Var("x"), Const("zero", value=0.0)),
)


@register_pass("eliminate-noop-arith")
class EliminateNoopArith(Fusion):
    """Remove adding or subtracting 0, multiplying or dividing by 1, and-ing true (any opset).

    Also or-ing false. Only where the constant cannot broadcast x to a larger shape, as the
    graph computes it."""

    pattern = PATTERN

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        key = "zero" if "zero" in match else "one"
        values = match.value(key)
        if np.any(values != (0 if key == "zero" else 1)):
            return f"constant is not exactly {0 if key == 'zero' else 1}"
        if self.dtype(match["x"]) != values.dtype:
            return "the constant's type differs from x's (or x's is unknown)"
        if values.size > 1 or values.ndim > 0:
            shape = self.shape(match["x"])
            if shape is None or values.ndim > len(shape):
                return f"the constant of shape {values.shape} may broadcast x up"
            for have, want in zip(shape[len(shape) - values.ndim :], values.shape):
                if want != 1 and have != want:
                    return f"the constant of shape {values.shape} may broadcast {shape}"
        return bypass_refusal(graph, match["x"], match.root.outputs[0])

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        replace_by(graph, match, match["x"])
