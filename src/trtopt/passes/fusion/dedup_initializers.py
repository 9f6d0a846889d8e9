"""``dedup-initializers``: one initializer for each distinct constant value."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_graphsurgeon as gs

from ..base import Pass, PassContext
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
        first: dict[tuple, gs.Constant] = {}
        for _name, tensor in sorted(graph.tensors().items()):
            if not isinstance(tensor, gs.Constant) or id(tensor) in outputs:
                continue
            data = np.ascontiguousarray(tensor.values)
            # The declared shape too: graphsurgeon can hold a scalar's value as shape (1,).
            shape = (tuple(tensor.shape), data.shape)
            key = (str(data.dtype), shape, hashlib.sha256(data.tobytes()).hexdigest())
            kept = first.setdefault(key, tensor)
            if kept is not tensor:
                redirect(tensor, kept)
                self.rewrites += 1
        if self.rewrites:
            ctx.log.info("dedup-initializers: %d duplicate(s) removed", self.rewrites)
            graph.cleanup()
            invalidate_shapes(graph)
        return graph
