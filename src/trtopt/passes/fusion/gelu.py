"""``fuse-gelu``: the erf form and the tanh approximation of GELU -> Gelu (opset 20)."""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import OpsetRaisingFusion
from .edit import replace_root
from .pattern import Const, Match, OneOf, Op, Var

MIN_OPSET = 20
RTOL = 1e-4  # the constants must be the GELU constants, up to float32 rounding

_X = Var("x")
_ERF_CDF = Op(
    "Add",
    Op(
        "Erf",
        OneOf(
            Op("Div", _X, Const(value=math.sqrt(2.0), rtol=RTOL)),
            Op("Mul", _X, Const(value=math.sqrt(0.5), rtol=RTOL)),
        ),
        name="erf",
    ),
    Const(value=1.0),
)
_CUBE = OneOf(
    Op("Pow", _X, Const(value=3.0)),
    Op("Mul", _X, Op("Mul", _X, _X)),
    Op("Mul", Op("Mul", _X, _X), _X),
)
_INNER = Op("Add", _X, Op("Mul", _CUBE, Const(value=0.044715, rtol=RTOL)))
_TANH_CDF = Op(
    "Add",
    Op("Tanh", Op("Mul", _INNER, Const(value=math.sqrt(2.0 / math.pi), rtol=RTOL)), name="tanh"),
    Const(value=1.0),
)
_HALF = Const(value=0.5)


def _gelu(cdf: Op) -> OneOf:
    """0.5 * x * cdf, in each order exporters multiply it."""
    return OneOf(
        Op("Mul", Op("Mul", _X, cdf), _HALF),
        Op("Mul", Op("Mul", _X, _HALF), cdf),
        Op("Mul", _X, Op("Mul", cdf, _HALF)),
        Op("Div", Op("Mul", _X, cdf), Const(value=2.0)),
    )


PATTERN = OneOf(_gelu(_ERF_CDF), _gelu(_TANH_CDF))


@register_pass("fuse-gelu")
class FuseGelu(OpsetRaisingFusion):
    """Fuse GELU's erf form and tanh approximation into Gelu (needs opset 20).

    0.5*x*(1+erf(x/sqrt 2)) and 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3))), in every order
    the exporters multiply them. Below opset 20 it is skipped unless ``upgrade_opset``."""

    pattern = PATTERN
    min_opset = MIN_OPSET
    hint_ops = frozenset({"Erf", "Tanh"})

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        attrs = {"approximate": "tanh"} if "tanh" in match else {}
        replace_root(graph, match, "Gelu", [match["x"]], attrs)
