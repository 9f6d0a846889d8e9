"""``cse``: common-subexpression elimination."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_graphsurgeon as gs

from ...graph_io import peek
from ..base import Pass, PassContext
from ..graph_clean import prune, sort
from ..graph_shapes import invalidate_shapes
from ..registry import register_pass

# Ops whose two evaluations on the same inputs may differ.
NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
     "Bernoulli", "Dropout"}
)  # fmt: skip


def _attr_key(value: object) -> object:
    if isinstance(value, gs.Constant):
        data = np.ascontiguousarray(peek(value))
        digest = hashlib.sha1(data.tobytes()).hexdigest()
        return ("tensor", str(data.dtype), tuple(value.shape), data.shape, digest)
    if isinstance(value, (list, tuple)):
        return tuple(_attr_key(v) for v in value)
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, value.tobytes())
    return (type(value).__name__, repr(value))


def redirect(old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of ``old`` read ``new`` instead."""
    for consumer in list(old.outputs):
        for i, tensor in enumerate(consumer.inputs):
            if tensor is old:
                consumer.inputs[i] = new


@register_pass("cse")
class CommonSubexpressions(Pass):
    """Merge nodes computing the same op, attributes and inputs (random ops never).

    Constant nodes with equal values merge too."""

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.rewrites = 0

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        self.rewrites = 0
        sort(graph)
        outputs = {id(t) for t in graph.outputs}
        seen: dict[tuple, gs.Node] = {}
        for node in graph.nodes:
            if node.op in NONDETERMINISTIC or any(
                isinstance(v, gs.Graph) for v in node.attrs.values()
            ):
                continue
            key = (
                node.domain or "",
                node.op,
                tuple(id(t) if t.name else None for t in node.inputs),
                tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items())),
                len(node.outputs),
            )
            first = seen.setdefault(key, node)
            if first is node or any(id(t) in outputs for t in node.outputs):
                continue
            for old, new in zip(node.outputs, first.outputs):
                redirect(old, new)
            self.rewrites += 1
        if self.rewrites:
            ctx.log.info("cse: %d node(s) merged", self.rewrites)
            sort(prune(graph))
            invalidate_shapes(graph)
        return graph
