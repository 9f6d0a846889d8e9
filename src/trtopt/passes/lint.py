"""``lint``: check the graph against a TensorRT target (the real parser, then the documented
rules) without changing it; with ``strict``, error-level findings stop the compile. The
findings go into the pass's record in report.json."""

from __future__ import annotations

from typing import Any, Literal

import onnx_graphsurgeon as gs
from pydantic import field_validator

from ..lint import lint_model
from ..lint.rules import compute_capability
from .base import Pass, PassContext, PassOptions
from .registry import register_pass

COMPILE_SKIPS = ("dynamic-shape",)
"""Rules for a bare model only: in a compile the build gives every dynamic input an
optimization profile (the recipe's `inputs.<name>.profile`, else one derived from the check's
dims) and reports it, which a pass cannot see."""


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
        compute_capabilities: list[str] | None = None
        """The GPUs the engine is for, as build.tensorrt_rtx names them (e.g. [8.9, 12.0]):
        FP8 with one below 8.9 is an error. Default: unknown (FP8 is then a warning)."""

        @field_validator("compute_capabilities", mode="before")
        @classmethod
        def _capabilities(cls, value: Any) -> Any:
            if isinstance(value, list):
                for item in value:
                    compute_capability(item)  # ValueError: not a compute capability
                return [str(item) for item in value]
            return value

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        model = gs.export_onnx(graph.copy())
        report = lint_model(
            model,
            self.options.target,
            strict=self.options.strict,
            parse=self.options.parse,
            skip=COMPILE_SKIPS,
            compute_capabilities=self.options.compute_capabilities,
        )
        for finding in report.findings:
            ctx.log.warning("lint %s", finding)
        ctx.details.update(report.to_json(rules=False))
        return graph
