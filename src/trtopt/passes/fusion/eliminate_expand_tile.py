"""``eliminate-expand-tile``: Expand/Tile that leave the shape as it is vanish."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import Fusion
from .edit import bypass_refusal, replace_by
from .pattern import Const, Match, OneOf, Op, Var

PATTERN = OneOf(
    Op("Expand", Var("x"), Const("shape"), name="op"),
    Op("Tile", Var("x"), Const("repeats"), name="op"),
)


@register_pass("eliminate-expand-tile")
class EliminateExpandTile(Fusion):
    """Remove Tile by all-ones repeats and Expand to a shape the input already has (any opset)."""

    pattern = PATTERN

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        if "repeats" in match:
            if np.any(match.value("repeats") != 1):
                return f"Tile repeats {match.value('repeats').tolist()}"
        else:
            target = [int(d) for d in match.value("shape").reshape(-1)]
            source = self.shape(match["x"])
            if source is None or len(target) > len(source):
                return f"Expand to {target} may raise the rank of '{match['x'].name}'"
            for have, want in zip(source[len(source) - len(target) :], target):
                if want != 1 and have != want:
                    return f"Expand to {target} may broadcast {source}"
        return bypass_refusal(graph, match["x"], match.root.outputs[0])

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        replace_by(graph, match, match["x"])
