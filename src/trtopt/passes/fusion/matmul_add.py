"""``fuse-matmul-add``: MatMul by a constant matrix plus a constant bias -> Gemm."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import Fusion
from .edit import replace_root
from .pattern import Const, Match, Op, Var

PATTERN = Op("Add", Op("MatMul", Var("a"), Const("w"), name="matmul"), Const("c"))


@register_pass("fuse-matmul-add")
class FuseMatMulAdd(Fusion):
    """Fuse MatMul with a constant [K, N] weight and a constant bias into Gemm (any opset).

    Only where A has rank 2 as the graph computes it: a higher-rank A would need a Reshape
    before and after the Gemm, which costs more nodes than it saves (TensorRT fuses a MatMul's
    bias add itself).
    """

    pattern = PATTERN

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        w, c = match.value("w"), match.value("c")
        if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating) or c.dtype != w.dtype:
            return f"weight {w.shape} {w.dtype} with bias {c.dtype} is not a float matrix"
        shape = self.shape(match["a"])
        if shape is None or len(shape) != 2:
            rank = "unknown" if shape is None else len(shape)
            return f"Gemm needs a rank-2 A; '{match['a'].name}' has rank {rank}"
        # C must broadcast to [M, N] without growing the MatMul result.
        if c.ndim > 2 or (c.ndim >= 1 and c.shape[-1] not in (1, w.shape[1])):
            return f"bias of shape {c.shape} does not broadcast to [M, {w.shape[1]}]"
        if c.ndim == 2 and c.shape[0] != 1 and c.shape[0] != shape[0]:
            return f"bias of shape {c.shape} does not broadcast to [{shape[0]}, {w.shape[1]}]"
        return None

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        inputs = [match["a"], match["w"], match["c"]]
        replace_root(graph, match, "Gemm", inputs, {}, name=match["matmul"].name)
