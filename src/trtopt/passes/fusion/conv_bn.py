"""``fuse-conv-bn``: fold an inference BatchNormalization into the preceding Conv."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import Fusion
from .edit import const, replace_root
from .pattern import Const, Match, Op, Opt, Var

PATTERN = Op(
    "BatchNormalization",
    Op("Conv", Var("x"), Const("w"), Opt(Const("b")), name="conv"),
    Const("scale"),
    Const("shift"),
    Const("mean"),
    Const("var"),
    name="bn",
)


def bn_affine(match: Match) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization as y = a * x + c per channel (float64)."""
    eps = float(match["bn"].attrs.get("epsilon", 1e-5))
    scale, shift, mean, var = (
        match.value(k).astype(np.float64) for k in ("scale", "shift", "mean", "var")
    )
    a = scale / np.sqrt(var + eps)
    return a, shift - a * mean


def bn_refusal(match: Match, channels: int) -> str | None:
    """Why a matched BatchNormalization cannot be folded, if it cannot."""
    if match["bn"].attrs.get("training_mode", 0):
        return "BatchNormalization is in training mode"
    for key in ("scale", "shift", "mean", "var"):
        if match.value(key).shape != (channels,):
            return f"BatchNormalization {key} has shape {match.value(key).shape}, not ({channels},)"
    return None


def conv_bias(match: Match, channels: int) -> np.ndarray:
    return match.value("b").astype(np.float64) if "b" in match else np.zeros(channels)


@register_pass("fuse-conv-bn")
class FuseConvBn(Fusion):
    """Fold BatchNormalization into the preceding Conv's weights and bias (any opset)."""

    pattern = PATTERN

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        w = match.value("w")
        if w.ndim < 3 or not np.issubdtype(w.dtype, np.floating):
            return f"Conv weight has shape {w.shape} and dtype {w.dtype}"
        return bn_refusal(match, w.shape[0])

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        w = match.value("w")
        a, c = bn_affine(match)
        weight = w.astype(np.float64) * a.reshape(-1, *([1] * (w.ndim - 1)))
        bias = conv_bias(match, w.shape[0]) * a + c
        conv = match["conv"]
        inputs = [
            match["x"],
            const(graph, f"{conv.name}_weight_bn", weight.astype(w.dtype)),
            const(graph, f"{conv.name}_bias_bn", bias.astype(w.dtype)),
        ]
        replace_root(graph, match, "Conv", inputs, dict(conv.attrs), name=conv.name)
