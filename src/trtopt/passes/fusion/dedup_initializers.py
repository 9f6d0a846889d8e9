"""``dedup-initializers``: one initializer for each distinct constant value."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_graphsurgeon as gs

from ...graph_io import peek
from ..base import Pass, PassContext
from ..graph_clean import prune
from ..graph_shapes import invalidate_shapes
from ..registry import register_pass
from .cse import redirect


@register_pass("dedup-initializers")
class DedupInitializers(Pass):
    """Make constants with the same dtype, shape and bytes one initializer.

    Smaller files, and common-subexpression elimination then sees equal inputs as equal."""

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.rewrites = 0

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        self.rewrites = 0
        outputs = {id(t) for t in graph.outputs}
        # Only constants that share dtype and shape can be equal: the bytes of the others are
        # never read (on a large model, most weights stay on disk).
        alike: dict[tuple, list[gs.Constant]] = {}
        for _name, tensor in sorted(graph.tensors().items()):
            if isinstance(tensor, gs.Constant) and id(tensor) not in outputs:
                alike.setdefault((str(tensor.dtype), tuple(tensor.shape)), []).append(tensor)
        first: dict[tuple, gs.Constant] = {}
        for group in alike.values():
            if len(group) < 2:
                continue
            for tensor in group:
                data = np.ascontiguousarray(peek(tensor))
                # The loaded shape too: graphsurgeon can hold a scalar's value as shape (1,).
                key = (str(data.dtype), tuple(tensor.shape), data.shape, _sha256(data))
                kept = first.setdefault(key, tensor)
                if kept is not tensor:
                    redirect(tensor, kept)
                    self.rewrites += 1
        if self.rewrites:
            ctx.log.info("dedup-initializers: %d duplicate(s) removed", self.rewrites)
            prune(graph)
            invalidate_shapes(graph)
        return graph


def _sha256(data: np.ndarray) -> str:
    return hashlib.sha256(data.reshape(-1).view(np.uint8)).hexdigest()
