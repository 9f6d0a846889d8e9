"""The ``Fusion`` pass base class: match a declared pattern at every node, check, rewrite,
repeat to a fixed point, and log why each candidate was refused."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from ..base import Pass, PassContext, PassOptions
from ..graph_clean import prune, sort
from ..graph_memo import memo
from ..graph_shapes import computed_shapes, invalidate_shapes
from .opset import opset, raise_opset
from .pattern import Match, OneOf, Op, constant_value, find, root_ops

MAX_ROUNDS = 8


@dataclass
class Refusal:
    """A root node a fusion looked at and did not rewrite, and why."""

    node: str
    reason: str


class Fusion(Pass):
    """Base of every fusion pass: set ``pattern`` (and ``min_opset``); implement ``rewrite``
    and, for conditions the pattern cannot say, ``check`` (returns why not, or None)."""

    pattern: ClassVar[Op | OneOf]
    min_opset: ClassVar[int] = 1

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.refusals: list[Refusal] = []
        self.rewrites = 0

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        return None

    def shape(self, tensor: gs.Tensor) -> list[int | str | None] | None:
        """The shape ``tensor`` has as the graph computes it (inferred once per round, on first
        use), or None when unknown. Constants give their own shape."""
        values = constant_value(tensor)
        if values is not None:
            return list(values.shape)
        return self._computed()[0].get(tensor.name)

    def _computed(self) -> tuple[dict, dict]:
        remembered = memo(self._graph)
        if remembered.shapes is None or remembered.dtypes is None:
            remembered.shapes, remembered.dtypes = computed_shapes(self._graph, symbolic=False)
        return remembered.shapes, remembered.dtypes

    def dtype(self, tensor: gs.Tensor) -> np.dtype | None:
        """The element type of ``tensor`` as the graph computes it, or None when unknown."""
        values = constant_value(tensor)
        if values is not None:
            return values.dtype
        found = self._computed()[1].get(tensor.name)
        return np.dtype(found) if found is not None else None

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        raise NotImplementedError

    def prepare(self, graph: gs.Graph, ctx: PassContext) -> str | None:
        """Called once before matching; returns why the whole pass is skipped, if it is."""
        if opset(graph) < self.min_opset:
            return f"needs opset >= {self.min_opset}, the model has {opset(graph)}"
        return None

    @cached_property
    def _ops(self) -> frozenset[str]:
        return frozenset(root_ops(self.pattern))

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        self.refusals, self.rewrites = [], 0
        memo(graph).names = None  # names other passes added since
        if not memo(graph).shared_shapes:
            invalidate_shapes(graph)  # another pass may have changed the graph since
        skipped = self.prepare(graph, ctx)
        if skipped:
            ctx.log.info("%s: skipped: %s", self.name, skipped)
            self.refusals.append(Refusal("<graph>", skipped))
            return graph
        for _ in range(MAX_ROUNDS):
            self._graph = graph
            outputs = {id(t) for t in graph.outputs}
            refusals, dead, changed = [], set(), 0
            # Last node first: a pattern rooted further down (layer norm with its scale and bias)
            # is tried before a smaller one inside it (the bare normalization).
            for node in reversed(list(graph.nodes)):
                if node.op not in self._ops or id(node) in dead or not node.outputs:
                    continue
                found = find(self.pattern, node, outputs)
                reason = found if isinstance(found, str) else self.check(found, graph)
                if reason is not None:
                    refusals.append(Refusal(node.name, reason))
                    continue
                if any(id(n) in dead for n in found.nodes):
                    continue
                self.rewrite(found, graph)
                # Shared nodes stay (they feed others), so later matches may use them this round.
                dead.update(id(n) for n in found.nodes if id(n) not in found.shared)
                changed += 1
            self.refusals = refusals
            if not changed:
                break
            self.rewrites += changed
            invalidate_shapes(graph)
            sort(prune(graph))
            memo(graph).names = None
        for refusal in self.refusals:
            ctx.log.debug("%s: '%s' not rewritten: %s", self.name, refusal.node, refusal.reason)
        if self.rewrites:
            ctx.log.info("%s: %d rewrite(s)", self.name, self.rewrites)
        return graph


class OpsetRaisingFusion(Fusion):
    """A fusion into an op newer than many models' opset: it may raise the model's opset to
    ``min_opset`` first, when asked and when that changes no node's meaning."""

    # Ops whose presence means the pattern may occur (raising the opset is pointless otherwise).
    hint_ops: ClassVar[frozenset[str]] = frozenset()

    class Options(PassOptions):
        upgrade_opset: bool = False
        """Raise a model's opset (from 13 on) to the one this fusion needs, when no op in the
        model changes meaning in between; off: older models are left as they are."""

    def prepare(self, graph: gs.Graph, ctx: PassContext) -> str | None:
        if self.options.upgrade_opset and any(n.op in self.hint_ops for n in graph.nodes):
            reason = raise_opset(graph, self.min_opset)
            if reason:
                return f"cannot raise the opset to {self.min_opset}: {reason}"
        return super().prepare(graph, ctx)
