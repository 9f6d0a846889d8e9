"""``infer-shapes``: record every intermediate tensor's shape and dtype in the graph."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_import
from .base import Pass, PassContext, PassOptions
from .registry import register_pass

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs
else:
    gs = lazy_import("onnx_graphsurgeon", globals())


@register_pass("infer-shapes")
class InferShapes(Pass):
    """Infer tensor shapes and dtypes (ONNX Runtime's symbolic inference, else ONNX's)."""

    class Options(PassOptions):
        symbolic: bool = False
        """Use ONNX Runtime's symbolic shape inference, which names derived dynamic dims
        (``batch*seq``) where ONNX's own names them ``unk__N``. Off by default: it writes wrong
        shapes on some graphs (the rotary embeddings of ONNX's node tests), which the stage
        check then rolls back."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        from .graph_shapes import computed_shapes  # graph code loads when a pass runs (Pass)

        # Inference sees the weights as typed inputs (graph_shapes), never their bytes, so a
        # model of any size costs no copy of them. Where it cannot tell a tensor's shape (an op
        # of a domain with no shape function), the declared one stays: inference is an aid,
        # never a reason to fail a compile.
        shapes, dtypes = computed_shapes(graph, self.options.symbolic)
        inputs = {id(t) for t in graph.inputs}
        outputs = {id(t) for t in graph.outputs}
        unknown = []
        for tensor in graph.tensors().values():
            if not isinstance(tensor, gs.Variable) or id(tensor) in inputs:
                continue
            if tensor.type != "tensor_type":
                continue  # sequences and optionals keep their declared types
            tensor.dtype = tensor.dtype or dtypes.get(tensor.name)
            computed = shapes.get(tensor.name)
            if computed is not None and id(tensor) in outputs:
                tensor.shape = refined(tensor.shape, computed)
            elif computed is not None:
                tensor.shape = computed
            elif tensor.shape is None:
                unknown.append(tensor.name)
        ctx.details["unknown_shapes"] = len(unknown)
        if unknown:
            domains = sorted({n.domain or "ai.onnx" for n in graph.nodes})
            ctx.log.info(
                "infer-shapes: %d tensor(s) of unknown shape (domains: %s), e.g. '%s'",
                len(unknown),
                ", ".join(domains),
                unknown[0],
            )
        return graph


def refined(declared: list | None, computed: list) -> list:
    """A graph output's declared shape, with the dims inference proved static filled in: the
    names a model gives its dynamic dims are its interface, never renamed ``unk__N``."""
    if declared is None or len(declared) != len(computed):
        return declared if declared is not None else computed
    return [
        c if isinstance(c, int) and not isinstance(d, int) else d
        for d, c in zip(declared, computed)
    ]
