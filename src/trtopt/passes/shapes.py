"""``infer-shapes``: record every intermediate tensor's shape and dtype in the graph."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from polygraphy.backend.onnx import InferShapes as PolygraphyInferShapes

from ..errors import PassError
from .base import Pass, PassContext, PassOptions
from .registry import register_pass


@register_pass("infer-shapes")
class InferShapes(Pass):
    """Infer tensor shapes and dtypes (ONNX Runtime's symbolic inference, else ONNX's)."""

    class Options(PassOptions):
        symbolic: bool = True
        """Use ONNX Runtime's symbolic shape inference, which names derived dynamic dims;
        falls back to onnx.shape_inference where it fails."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        model = gs.export_onnx(graph)
        # Polygraphy's loader handles models over the 2 GiB protobuf limit by round-tripping
        # through a file, and owns the ORT-then-ONNX fallback.
        loader = PolygraphyInferShapes(
            model, error_ok=False, allow_onnxruntime=self.options.symbolic
        )
        try:
            inferred = loader()
        except Exception as error:
            raise PassError(f"shape inference failed: {error}") from error
        return gs.import_onnx(inferred)
