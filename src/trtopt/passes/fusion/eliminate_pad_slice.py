"""``eliminate-pad-slice``: Pad by nothing and Slice of everything vanish."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import Fusion
from .edit import bypass_refusal, replace_by
from .pattern import Const, Match, OneOf, Op, Opt, Var

# A Slice end at or past this is "to the end" whatever the dim (exporters write INT64_MAX).
TO_THE_END = 2**31 - 1

PATTERN = OneOf(
    Op("Pad", Var("x"), Opt(Const("pads")), Opt(Var()), Opt(Var()), name="pad"),
    Op(
        "Slice",
        Var("x"),
        Const("starts"),
        Const("ends"),
        Opt(Const("axes")),
        Opt(Const("steps")),
        name="slice",
    ),
)


@register_pass("eliminate-pad-slice")
class EliminatePadSlice(Fusion):
    """Remove Pad with all-zero pads and Slice that keeps every element (any opset)."""

    pattern = PATTERN

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        if "pad" in match:
            pads = match.value("pads") if "pads" in match else match["pad"].attrs.get("pads")
            if pads is None or np.any(np.asarray(pads) != 0):
                return "Pad pads something"
        else:
            reason = self._slice_refusal(match)
            if reason:
                return reason
        return bypass_refusal(graph, match["x"], match.root.outputs[0])

    def _slice_refusal(self, match: Match) -> str | None:
        starts, ends = match.value("starts").reshape(-1), match.value("ends").reshape(-1)
        steps = match.value("steps").reshape(-1) if "steps" in match else np.ones_like(starts)
        if np.any(steps != 1) or np.any(starts != 0):
            return "Slice steps or starts are not 1 and 0"
        if np.all(ends >= TO_THE_END):
            return None
        shape = self.shape(match["x"])
        if shape is None:
            return "Slice ends before the end, or the input shape is unknown"
        axes = match.value("axes").reshape(-1) if "axes" in match else np.arange(len(ends))
        for axis, end in zip(axes, ends):
            dim = shape[int(axis) % len(shape)]
            if end < TO_THE_END and not (isinstance(dim, int) and end >= dim):
                return f"Slice ends at {int(end)} on axis {int(axis)} (of {dim})"
        return None

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        replace_by(graph, match, match["x"])
