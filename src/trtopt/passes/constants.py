"""``fold-constants``: evaluate every subgraph whose inputs are all known."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from pydantic import ByteSize

from .base import Pass, PassContext, PassOptions
from .graph_shapes import computed_shapes
from .registry import register_pass


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
        partitioning: bool = False
        """Fold in partitions, so one unfoldable node does not stop its neighbours."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        if self.options.fold_shapes:
            # graphsurgeon folds a Shape node from its input tensor's recorded shape, which for
            # an imported model is whatever the model declared: replace those by the computed
            # ones (unknown where inference cannot tell), so a wrong declaration is never baked
            # into a constant.
            shapes, dtypes = computed_shapes(graph)
            inputs = {id(t) for t in graph.inputs}
            for tensor in graph.tensors().values():
                if isinstance(tensor, gs.Variable) and id(tensor) not in inputs:
                    tensor.dtype = tensor.dtype or dtypes.get(tensor.name)
                    tensor.shape = shapes.get(tensor.name) if tensor.dtype else None
        # onnx-graphsurgeon evaluates the constant subgraph with ONNX Runtime; when that fails
        # (an op ORT cannot run) it logs and leaves the graph as it was, which is still correct.
        graph.fold_constants(
            fold_shapes=self.options.fold_shapes,
            size_threshold=self.options.size_threshold,
            partitioning="basic" if self.options.partitioning else None,
            error_ok=True,
        )
        graph.cleanup(remove_unused_node_outputs=True)
        return graph
