"""``cleanup``: remove what cannot affect the outputs, then sort the graph."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_import
from .base import Pass, PassContext, PassOptions
from .registry import register_pass

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs
else:
    gs = lazy_import("onnx_graphsurgeon", globals())


def _is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(tensor is out for out in graph.outputs)


def _is_graph_input(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(tensor is inp for inp in graph.inputs)


def _replace(tensors: list[gs.Tensor], old: gs.Tensor, new: gs.Tensor) -> None:
    """Swap ``old`` for ``new`` by index, which keeps graphsurgeon's producer/consumer links."""
    for i, tensor in enumerate(tensors):
        if tensor is old:
            tensors[i] = new


def bypass(graph: gs.Graph, node: gs.Node) -> bool:
    """Remove a node whose first output equals its first input, keeping graph output names.

    Returns False (and leaves the node) when both ends are graph boundaries, where removing it
    would rename a model input or output.
    """
    source, result = node.inputs[0], node.outputs[0]
    if not _is_graph_output(graph, result):
        for consumer in list(result.outputs):
            _replace(consumer.inputs, result, source)
    elif (
        not isinstance(source, gs.Constant)
        and not _is_graph_input(graph, source)
        and not _is_graph_output(graph, source)
        and len(source.inputs) == 1
    ):
        # The result must keep its name: let the producer of `source` write `result` directly.
        producer = source.inputs[0]
        for consumer in list(source.outputs):
            if consumer is not node:
                _replace(consumer.inputs, source, result)
        node.outputs.clear()
        _replace(producer.outputs, source, result)
    else:
        return False
    node.inputs.clear()
    node.outputs.clear()
    return True


@register_pass("cleanup")
class Cleanup(Pass):
    """Remove Identity and inference-time Dropout, dead nodes and unused initializers; toposort."""

    class Options(PassOptions):
        remove_identity: bool = True
        """Remove Identity nodes (graph input and output names are kept)."""
        remove_dropout: bool = True
        """Remove Dropout nodes whose mask output is unused (Dropout is identity at inference)."""
        remove_unused_inputs: bool = False
        """Also remove graph inputs that nothing reads (changes the model's signature)."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        from .graph_clean import prune, sort  # graph code loads when a pass runs (Pass)

        for node in list(graph.nodes):
            if node.op == "Identity" and self.options.remove_identity:
                bypass(graph, node)
            elif node.op == "Dropout" and self.options.remove_dropout and self._is_inference(node):
                bypass(graph, node)
        prune(graph, remove_unused_graph_inputs=self.options.remove_unused_inputs)
        return sort(graph)

    @staticmethod
    def _is_inference(node: gs.Node) -> bool:
        """Dropout is identity unless training_mode is set or its mask output is read."""
        mask_used = len(node.outputs) > 1 and bool(node.outputs[1].outputs)
        training = len(node.inputs) > 2 and not (
            isinstance(node.inputs[2], gs.Constant) and not node.inputs[2].values.any()
        )
        return not mask_used and not training
