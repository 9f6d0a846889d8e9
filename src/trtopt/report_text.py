"""A compile's report written out for machines and people: report.json, report.md and the
terminal summary, from report.json's dict alone (a compile served from the cache writes them
without loading what made them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import jsontext
from .formatting import (
    coverage_type,
    describe_coverage,
    format_limit,
    format_metric,
    latency_where,
)

KEPT_SHOWN = 5
"""Nodes kept in higher precision that the terminal summary names (report.md lists all)."""


def write_reports(report: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "report.json").write_text(jsontext.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    """The same report, briefly, for people."""
    model, build, accuracy = report["model"], report["build"], report["accuracy"]
    lines = [
        f"# {report['recipe']['name']}: {report['verdict'].upper()}",
        "",
        f"- model: `{model['path']}` (sha256 `{model['sha256'][:16]}`, {model['nodes']} nodes)",
        f"- artifact: `{build['artifact']}` ({build['backend']}, {build['size_bytes']} bytes, "
        f"built in {build['seconds']:.2f} s)",
        f"- accuracy: {accuracy['verdict']} over {accuracy['samples']} samples "
        f"({accuracy['data']})"
        + (f"; {accuracy['artifact_not_run']}" if accuracy.get("artifact_not_run") else ""),
        *[f"- **failed**: {line}" for line in accuracy["failures"]],
        "",
        "## Passes",
        "",
        "| pass | seconds | nodes before | nodes after | changes |",
        "|---|---:|---:|---:|---|",
    ]
    for p in report["passes"]:
        delta = ", ".join(f"{op} {n:+d}" for op, n in p["op_delta"].items()) or "no-op"
        if p.get("rolled_back"):
            delta = f"**rolled back**: {p['rolled_back']}"
        lines.append(
            f"| {p['name']} | {p['seconds']:.3f} | {p['nodes_before']} | {p['nodes_after']} | "
            f"{delta} |"
        )
    if report.get("first_diverging_pass"):
        lines += ["", f"First pass whose outputs diverge: **{report['first_diverging_pass']}**"]
    lines += ["", "## Accuracy", "", *_accuracy_table(accuracy)]
    for shape_check in accuracy.get("profiles") or []:
        shapes = ", ".join(f"{name} {shape}" for name, shape in shape_check["shapes"].items())
        lines += [
            "",
            f"### At {shape_check['profile']} ({shapes}): {shape_check['verdict']}",
            "",
            *_accuracy_table(shape_check),
        ]
    golden = report.get("golden")
    if golden:
        lines += [
            "",
            f"## Golden check (`{golden['golden']}`): {golden['verdict']}",
            "",
            *_accuracy_table(golden["accuracy"]),
        ]
    coverage = report.get("quantized_coverage")
    if coverage:
        heading = f"## {coverage_type(coverage)} coverage"
        lines += ["", heading, "", f"- {describe_coverage(coverage)}"]
    kept = report.get("kept_in_higher_precision") or []
    if kept:
        lines += [
            "",
            "## Kept in higher precision",
            "",
            "| node | pass | why |",
            "|---|---|---|",
            *(f"| {k.get('node')} | {k.get('pass')} | {k.get('reason', '')} |" for k in kept),
        ]
    latency = report.get("latency")
    if latency:
        lines += [
            "",
            f"## Latency ({latency_where(report)}, {latency['runs']} runs)",
            "",
            "| model | median ms | p90 ms | p99 ms | throughput /s |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {who} | {t['median_ms']:.3f} | {t['p90_ms']:.3f} | {t['p99_ms']:.3f} | "
                f"{t['throughput_per_s']:.1f} |"
                for who, t in ((w, latency[w]) for w in ("reference", "artifact"))
            ),
        ]
    warnings = report.get("warnings") or []
    if warnings:
        lines += ["", "## Warnings", "", *(f"- {line}" for line in warnings)]
    return "\n".join(lines) + "\n"


def _accuracy_table(accuracy: dict[str, Any]) -> list[str]:
    """Markdown rows of an accuracy record's metrics, limits and verdicts."""
    lines = ["| output | metric | value | limit | verdict |", "|---|---|---:|---:|---|"]
    for name, output in accuracy["outputs"].items():
        if output["error"]:
            lines.append(f"| {name} | - | - | - | FAIL: {output['error']} |")
        gated = {c["metric"]: c for c in output["checks"]}
        for metric, value in output["metrics"].items():
            if value is None:
                continue
            check = gated.get(metric)
            verdict = ("pass" if check["passed"] else "**FAIL**") if check else "not gated"
            limit = format_limit(check["limit"]) if check else "-"
            shown = format_metric(value, check["limit"] if check else None)
            lines.append(f"| {name} | {metric} | {shown} | {limit} | {verdict} |")
    return lines


def summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    model = report["model"]
    nodes_after = report["passes"][-1]["nodes_after"] if report["passes"] else model["nodes"]
    rolled = sum(bool(p.get("rolled_back")) for p in report["passes"])
    kept = f"{len(report['passes']) - rolled} kept" + (f", {rolled} rolled back" if rolled else "")
    lines = [
        f"{report['recipe']['name']}: {report['verdict'].upper()}",
        f"  passes   {kept}, nodes {model['nodes']} -> {nodes_after}",
        f"  build    {report['build']['backend']} in {report['build']['seconds']:.2f} s",
        f"  accuracy {report['accuracy']['verdict']} ({report['accuracy']['samples']} samples)",
    ]
    if report["accuracy"].get("artifact_not_run"):
        lines.append(f"    checked the final ONNX graph: {report['accuracy']['artifact_not_run']}")
    golden = report.get("golden")
    if golden:
        lines.append(
            f"  golden   {golden['verdict']} ({golden['accuracy']['samples']} samples of "
            f"{golden['golden']})"
        )
    shape_checks = report["accuracy"].get("profiles") or []
    if shape_checks:
        failed_shapes = [c["profile"] for c in shape_checks if c["verdict"] != "pass"]
        lines.append(
            f"  profiles accuracy at {len(shape_checks)} profile shapes: "
            + (f"fail at {', '.join(failed_shapes)}" if failed_shapes else "pass")
        )
    coverage = report.get("quantized_coverage")
    if coverage:
        lines.append(f"  {coverage_type(coverage).lower():<8} {describe_coverage(coverage)}")
    kept = report.get("kept_in_higher_precision") or []
    if kept:
        names = ", ".join(str(k.get("node")) for k in kept[:KEPT_SHOWN])
        more = f" and {len(kept) - KEPT_SHOWN} more (report.md)" if len(kept) > KEPT_SHOWN else ""
        lines.append(f"  float    {len(kept)} kept in higher precision: {names}{more}")
    lines += [f"    FAIL {line}" for line in report["accuracy"]["failures"]]
    failed = set(report["accuracy"]["failures"])
    lines += [
        f"    WARN {line}"
        for line in report.get("warnings") or report.get("rolled_back") or []
        if f"{line} (strict)" not in failed
    ]
    latency = report.get("latency")
    if latency:
        lines.append(
            f"  latency  {latency['reference']['median_ms']:.3f} ms -> "
            f"{latency['artifact']['median_ms']:.3f} ms (median, {latency_where(report)})"
        )
    lines.append(f"  output   {report['output_dir']}")
    return "\n".join(lines)
