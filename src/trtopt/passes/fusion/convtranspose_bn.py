"""``fuse-convtranspose-bn``: fold an inference BatchNormalization into a ConvTranspose."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import Fusion
from .conv_bn import bn_affine, bn_refusal
from .edit import const, replace_root
from .pattern import Const, Match, Op, Opt, Var

PATTERN = Op(
    "BatchNormalization",
    Op("ConvTranspose", Var("x"), Const("w"), Opt(Const("b")), name="conv"),
    Const("scale"),
    Const("shift"),
    Const("mean"),
    Const("var"),
    name="bn",
)


def _channels(w: np.ndarray, group: int) -> int:
    # ConvTranspose weights are [C_in, C_out / group, k...].
    return w.shape[1] * group


@register_pass("fuse-convtranspose-bn")
class FuseConvTransposeBn(Fusion):
    """Fold BatchNormalization into the preceding ConvTranspose's weights and bias (any opset)."""

    pattern = PATTERN

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        w = match.value("w")
        if w.ndim < 3 or not np.issubdtype(w.dtype, np.floating):
            return f"ConvTranspose weight has shape {w.shape} and dtype {w.dtype}"
        return bn_refusal(match, _channels(w, int(match["conv"].attrs.get("group", 1))))

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        conv = match["conv"]
        w = match.value("w")
        group = int(conv.attrs.get("group", 1))
        channels = _channels(w, group)
        a, c = bn_affine(match)
        # Output channel g * (C_out / group) + j reads weight[g * (C_in / group) + i, j].
        grouped = w.astype(np.float64).reshape(group, w.shape[0] // group, *w.shape[1:])
        scale = a.reshape(group, 1, w.shape[1], *([1] * (w.ndim - 2)))
        weight = (grouped * scale).reshape(w.shape)
        bias = match.value("b").astype(np.float64) if "b" in match else np.zeros(channels)
        inputs = [
            match["x"],
            const(graph, f"{conv.name}_weight_bn", weight.astype(w.dtype)),
            const(graph, f"{conv.name}_bias_bn", (bias * a + c).astype(w.dtype)),
        ]
        replace_root(graph, match, "ConvTranspose", inputs, dict(conv.attrs), name=conv.name)
