"""``fold-constants``: evaluate every subgraph whose inputs are all known."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ByteSize

from .base import Pass, PassContext, PassOptions
from .registry import register_pass

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

MAX_ROUNDS = 4


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Fold constant subgraphs (and shape computations) into initializers with ONNX Runtime."""

    class Options(PassOptions):
        size_threshold: ByteSize | None = ByteSize(16 << 20)
        """Do not fold a tensor larger than this (e.g. 16MiB), so folding never balloons the file;
        null folds everything."""
        fold_shapes: bool = True
        """Also fold Shape nodes whose input shape is static, as the graph computes it (the
        shapes a model declares for its outputs and intermediates are ignored: exporters get
        them wrong)."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        from .folding import fold  # graph code loads when a pass runs (Pass)
        from .graph_clean import prune

        self._fold_shapes(graph)
        for _ in range(MAX_ROUNDS):
            if not fold(graph, self.options.size_threshold):
                break
            prune(graph)
            # What folded may make more shapes static (a Reshape to a folded target).
            if not self._fold_shapes(graph):
                break
        return prune(graph)

    def _fold_shapes(self, graph: gs.Graph) -> int:
        """Shape nodes with static inputs to constants (how many), by ONNX's own inference
        (not ONNX Runtime's symbolic one, whose auto-merge may equate dims that differ): a dim
        is static here only if every valid run has it. No Shape node: no inference."""
        if not self.options.fold_shapes or not any(n.op == "Shape" for n in graph.nodes):
            return 0
        from .folding import fold_shapes
        from .graph_shapes import computed_shapes

        shapes, _ = computed_shapes(graph, symbolic=False)
        return fold_shapes(graph, shapes)
