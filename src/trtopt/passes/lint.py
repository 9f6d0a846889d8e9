"""``lint``: check the graph against a TensorRT target (the real parser, then the documented
rules) without changing it; with ``strict``, error-level findings stop the compile."""

from __future__ import annotations

from typing import Literal

import onnx_graphsurgeon as gs

from ..lint import lint_model
from .base import Pass, PassContext, PassOptions
from .registry import register_pass


@register_pass("lint")
class Lint(Pass):
    """Lint the graph for a TensorRT target (parser errors by node, unsupported ops and types)."""

    class Options(PassOptions):
        target: Literal["tensorrt-10", "tensorrt-11", "tensorrt-rtx"] = "tensorrt-10"
        """The TensorRT the graph is meant for."""
        strict: bool = True
        """Stop the compile (exit 2) on any error-level finding, before GPU time is spent."""
        parse: bool = True
        """Also parse with the real TensorRT for RTX parser when it is installed."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        model = gs.export_onnx(graph.copy())
        report = lint_model(
            model, self.options.target, strict=self.options.strict, parse=self.options.parse
        )
        for finding in report.findings:
            ctx.log.warning("lint %s", finding)
        return graph
