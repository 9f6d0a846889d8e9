"""``eliminate-unsqueeze-squeeze``: Unsqueeze/Squeeze pairs vanish; Unsqueeze chains merge."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import Fusion
from .edit import bypass_refusal, const, replace_by, replace_root
from .pattern import Const, Match, OneOf, Op, Opt, Var

# The first node may feed others too: rewriting the second never duplicates work.
_X, _A1 = Var("x"), Opt(Const("a1"))
PATTERN = OneOf(
    Op("Squeeze", Op("Unsqueeze", _X, _A1, name="first", shared=True), Opt(Const("a2"))),
    Op("Unsqueeze", Op("Squeeze", _X, _A1, name="first", shared=True), Opt(Const("a2"))),
    Op("Unsqueeze", Op("Unsqueeze", _X, _A1, name="first", shared=True), Opt(Const("a2"))),
)


def _axes(match: Match, key: str, node: gs.Node) -> list[int] | None:
    if key in match:
        return sorted(int(a) for a in match.value(key).reshape(-1))
    axes = node.attrs.get("axes")
    return None if axes is None else sorted(int(a) for a in axes)


@register_pass("eliminate-unsqueeze-squeeze")
class EliminateUnsqueezeSqueeze(Fusion):
    """Remove Unsqueeze/Squeeze pairs over the same axes; merge Unsqueeze chains (any opset).

    Squeeze(Unsqueeze(x)) and Unsqueeze(Squeeze(x)) with equal axes are the identity (both axes
    lists refer to the same rank); Unsqueeze(Unsqueeze(x)) becomes one Unsqueeze."""

    pattern = PATTERN

    def _merged(self, match: Match) -> list[int] | str:
        """The axes of one Unsqueeze equal to the chain, in output coordinates."""
        first, second = _axes(match, "a1", match["first"]), _axes(match, "a2", match.root)
        assert first is not None and second is not None
        rank = None
        if any(a < 0 for a in first + second):
            shape = self.shape(match["x"])
            if shape is None:
                return "negative axes and the input rank is unknown"
            rank = len(shape)
            first = sorted(a % (rank + len(first)) for a in first)
            second = sorted(a % (rank + len(first) + len(second)) for a in second)
        # Output positions not inserted by the second Unsqueeze are the intermediate dims, in order.
        limit = (rank if rank is not None else max(first + second) + 1) + len(first) + len(second)
        kept = [p for p in range(limit) if p not in second]
        if max(first) >= len(kept):
            return "axes out of range"
        return sorted(second + [kept[a] for a in first])

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        first = _axes(match, "a1", match["first"])
        second = _axes(match, "a2", match.root)
        if first is None or second is None:
            return "a Squeeze has no explicit axes"
        if match.root.op == match["first"].op:
            merged = self._merged(match)
            return merged if isinstance(merged, str) else None
        if first != second:
            return f"axes differ ({first} vs {second})"
        return bypass_refusal(graph, match["x"], match.root.outputs[0])

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        if match.root.op != match["first"].op:
            replace_by(graph, match, match["x"])
            return
        merged = self._merged(match)
        assert not isinstance(merged, str)
        if "a2" in match:  # opset 13+: axes are an input
            axes = const(graph, f"{match.root.name}_axes", np.array(merged, dtype=np.int64))
            replace_root(graph, match, "Unsqueeze", [match["x"], axes])
        else:
            replace_root(graph, match, "Unsqueeze", [match["x"]], {"axes": merged})
