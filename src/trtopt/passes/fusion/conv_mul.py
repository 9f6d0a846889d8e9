"""``fuse-conv-mul``: fold a per-channel constant Mul after a Conv into its weights and bias."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import Fusion
from .conv_add import check_per_channel_constant, per_channel
from .edit import const, replace_root
from .pattern import Const, Match, Op, Opt, Var

PATTERN = Op("Mul", Op("Conv", Var("x"), Const("w"), Opt(Const("b")), name="conv"), Const("c"))


@register_pass("fuse-conv-mul")
class FuseConvMul(Fusion):
    """Fold a per-channel constant scale of a Conv output into its weights and bias (any opset)."""

    pattern = PATTERN

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        return check_per_channel_constant(match)

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        conv, w = match["conv"], match.value("w")
        scale = per_channel(match.value("c"), w.shape[0], w.ndim)
        assert not isinstance(scale, str)
        weight = w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))
        inputs = [match["x"], const(graph, f"{conv.name}_weight_scaled", weight.astype(w.dtype))]
        if "b" in match:
            bias = match.value("b").astype(np.float64) * scale
            inputs.append(const(graph, f"{conv.name}_bias_scaled", bias.astype(w.dtype)))
        replace_root(graph, match, "Conv", inputs, dict(conv.attrs), name=conv.name)
