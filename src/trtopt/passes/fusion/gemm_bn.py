"""``fuse-gemm-bn``: fold an inference BatchNormalization into the preceding Gemm."""

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
    Op("Gemm", Var("a"), Const("w"), Opt(Const("c")), name="gemm"),
    Const("scale"),
    Const("shift"),
    Const("mean"),
    Const("var"),
    name="bn",
)


@register_pass("fuse-gemm-bn")
class FuseGemmBn(Fusion):
    """Fold BatchNormalization over a Gemm's [M, N] output into its weights and bias (any opset)."""

    pattern = PATTERN

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        w, gemm = match.value("w"), match["gemm"]
        if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
            return f"Gemm B has shape {w.shape} and dtype {w.dtype}"
        channels = w.shape[0] if gemm.attrs.get("transB", 0) else w.shape[1]
        if "c" in match:
            c = match.value("c")
            if c.ndim > 2 or (c.ndim >= 1 and c.shape[-1] not in (1, channels)):
                return f"Gemm C has shape {c.shape}"
        return bn_refusal(match, channels)

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        gemm, w = match["gemm"], match.value("w")
        trans_b = bool(gemm.attrs.get("transB", 0))
        a, shift = bn_affine(match)
        weight = w.astype(np.float64) * (a[:, None] if trans_b else a[None, :])
        beta = float(gemm.attrs.get("beta", 1.0))
        c = match.value("c").astype(np.float64) if "c" in match else np.zeros(1)
        bias = beta * c * a + shift
        attrs = dict(gemm.attrs, beta=1.0)
        inputs = [
            match["a"],
            const(graph, f"{gemm.name}_weight_bn", weight.astype(w.dtype)),
            const(graph, f"{gemm.name}_bias_bn", bias.astype(w.dtype)),
        ]
        replace_root(graph, match, "Gemm", inputs, attrs, name=gemm.name)
