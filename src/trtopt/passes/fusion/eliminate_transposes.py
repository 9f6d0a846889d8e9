"""``eliminate-transposes``: Transpose pairs that cancel vanish; other pairs become one."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import Fusion
from .edit import bypass_refusal, replace_by, replace_root
from .pattern import Match, Op, Var

PATTERN = Op("Transpose", Op("Transpose", Var("x"), name="first"), name="second")


def _composed(match: Match) -> list[int] | None:
    first, second = match["first"].attrs.get("perm"), match["second"].attrs.get("perm")
    if first is None or second is None or len(first) != len(second):
        return None
    return [int(first[int(axis)]) for axis in second]


@register_pass("eliminate-transposes")
class EliminateTransposes(Fusion):
    """Remove Transpose pairs that cancel and merge other Transpose pairs into one (any opset)."""

    pattern = PATTERN

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        perm = _composed(match)
        if perm is None:
            return "a Transpose has no explicit perm"
        if perm == sorted(perm):
            return bypass_refusal(graph, match["x"], match.root.outputs[0])
        return None

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        perm = _composed(match)
        assert perm is not None
        if perm == sorted(perm):
            replace_by(graph, match, match["x"])
        else:
            replace_root(graph, match, "Transpose", [match["x"]], {"perm": perm})
