"""Numbers and settings for people: metrics to the precision their limits need, limits as the
recipe wrote them, quantization coverage in one line."""

from __future__ import annotations

import math
from typing import Any


def format_value(value: Any, digits: int = 4) -> str:
    """A metric or setting for people: floats to ``digits`` significant digits, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def format_limit(limit: Any) -> str:
    """A metric's limit as the recipe wrote it (0.99999, not 1)."""
    return f"{limit:.10g}" if isinstance(limit, float) else format_value(limit)


def format_metric(value: Any, limit: Any = None, digits: int = 4) -> str:
    """A metric for people, to one decimal past its limit's precision where 4 significant
    digits would hide the difference (a cosine of 0.9999987 against 0.99999 shows 0.999999,
    not 1)."""
    text = format_value(value, digits)
    if not isinstance(value, float) or not isinstance(limit, int | float):
        return text
    limit_text = format_limit(float(limit))
    if not math.isfinite(value) or "e" in text or "e" in limit_text:
        return text
    decimals = len(limit_text.partition(".")[2]) + 1
    if decimals <= len(text.partition(".")[2]):
        return text
    return f"{value:.{decimals}f}"


def describe_coverage(coverage: dict[str, Any]) -> str:
    """One line: how much of the quantizable compute a quantizing pass quantized, and to
    which type (INT8 unless the coverage names another)."""
    layers, macs = coverage["layers"], coverage["macs"]
    kind = coverage_type(coverage)
    text = f"{layers['quantized']} of {layers['quantizable']} quantizable layers in {kind}"
    if macs["quantizable"]:
        share = 100.0 * macs["quantized"] / macs["quantizable"]
        text += f", {share:.1f}% of {macs['quantizable']:,} MACs (dynamic dims as 1)"
    if macs.get("unknown_layers"):
        text += f"; {macs['unknown_layers']} layers of unknown shape not counted"
    return text


def coverage_type(coverage: dict[str, Any]) -> str:
    """The type a coverage counts, as a heading says it (INT8, FP8)."""
    return str(coverage.get("dtype") or "int8").upper()


def latency_where(report: dict[str, Any]) -> str:
    """Where the latency was measured: ONNX Runtime's providers the artifact ran on (CPU
    unless a recipe named GPU providers), or the engine's own runtime."""
    build = report["build"]
    if build["backend"] != "onnxruntime" and not report["accuracy"].get("artifact_not_run"):
        return build["backend"]
    providers = build.get("providers") or ["CPUExecutionProvider"]
    if providers == ["CPUExecutionProvider"]:
        return "ONNX Runtime CPU"
    return "ONNX Runtime " + ", ".join(p.removesuffix("ExecutionProvider") for p in providers)
