"""``fuse-conv-add``: fold a per-channel constant Add after a Conv into its bias."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import Fusion
from .edit import const, replace_root
from .pattern import Const, Match, Op, Opt, Var

PATTERN = Op("Add", Op("Conv", Var("x"), Const("w"), Opt(Const("b")), name="conv"), Const("c"))


def per_channel(values: np.ndarray, channels: int, rank: int) -> np.ndarray | str:
    """``values`` as a [channels] vector when, broadcast against a Conv output of ``rank``,
    it varies only along the channel axis and does not grow the output; else why not."""
    if values.ndim > rank:
        return f"constant of shape {values.shape} would broadcast the Conv output up"
    shape = (1,) * (rank - values.ndim) + values.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return f"constant of shape {values.shape} is not per-channel for {channels} channels"
    return np.broadcast_to(values.reshape(-1), (channels,)).astype(np.float64)


def check_per_channel_constant(match: Match) -> str | None:
    """Why a Conv (weight ``w``) followed by an elementwise constant ``c`` cannot fold."""
    w, c = match.value("w"), match.value("c")
    if not np.issubdtype(w.dtype, np.floating) or c.dtype != w.dtype:
        return f"dtypes differ or are not floating point ({w.dtype}, {c.dtype})"
    found = per_channel(c, w.shape[0], w.ndim)
    return found if isinstance(found, str) else None


@register_pass("fuse-conv-add")
class FuseConvAdd(Fusion):
    """Fold a per-channel constant added to a Conv output into the Conv bias (any opset)."""

    pattern = PATTERN

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        return check_per_channel_constant(match)

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        conv, w = match["conv"], match.value("w")
        c = per_channel(match.value("c"), w.shape[0], w.ndim)
        bias = match.value("b").astype(np.float64) if "b" in match else np.zeros(w.shape[0])
        inputs = [
            match["x"],
            match["w"],
            const(graph, f"{conv.name}_bias", (bias + c).astype(w.dtype)),
        ]
        replace_root(graph, match, "Conv", inputs, dict(conv.attrs), name=conv.name)
