"""``eliminate-reshapes``: a reshape of a reshape becomes one Reshape; a no-op Reshape vanishes."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import Fusion
from .edit import bypass_refusal, replace_by, replace_root
from .pattern import Const, Match, OneOf, Op, Opt, Var

RESHAPING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
PATTERN = OneOf(
    Op("Reshape", Op(RESHAPING, Var("x"), Opt(Var()), name="inner"), Const("shape"), name="outer"),
    Op("Reshape", Var("x"), Const("shape"), name="outer"),
)


@register_pass("eliminate-reshapes")
class EliminateReshapes(Fusion):
    """Collapse reshape chains into one Reshape; remove Reshapes that change nothing (any opset).

    A chain is Reshape/Flatten/Squeeze/Unsqueeze followed by a Reshape to a constant shape; a
    Reshape changes nothing when the computed input shape already is its target."""

    pattern = PATTERN

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        shape = match.value("shape").reshape(-1)
        allowzero = int(match["outer"].attrs.get("allowzero", 0))
        if "inner" in match:
            if not allowzero and np.any(shape == 0):
                return "the outer Reshape copies a dim (0) from the intermediate shape"
            return None
        source = self.shape(match["x"])
        if source is None or len(source) != len(shape):
            return "not a chain, and the rank changes (or is unknown)"
        # Every dim kept (0 copies it, an equal int keeps it) but at most one -1, which then
        # must be the remaining dim: the element count is the same.
        for have, want in zip(source, shape.tolist()):
            kept = (want == 0 and not allowzero) or (isinstance(have, int) and have == want)
            if not kept and want != -1:
                return f"not a chain, and it changes the shape {source} to {shape.tolist()}"
        if int(np.sum(shape == -1)) > 1:
            return "more than one -1 in the target"
        return bypass_refusal(graph, match["x"], match.root.outputs[0])

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        if "inner" in match:
            inputs = [match["x"], match["shape"]]
            replace_root(graph, match, "Reshape", inputs, dict(match["outer"].attrs))
        else:
            replace_by(graph, match, match["x"])
