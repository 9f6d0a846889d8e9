"""report.json (machine-readable, versioned), report.md and the terminal summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import jsontext
from ._version import versions
from .accuracy import AccuracyResult
from .errors import EXIT_ACCURACY, EXIT_OK, EXIT_USER
from .feeds import Feed
from .formatting import (
    coverage_type,
    describe_coverage,
    format_limit,
    format_metric,
    latency_where,
)
from .gate import CheckResult, ShapeCheck
from .session import checked as checked_what
from .stages import PassRecord, kept_in_higher_precision, quantized_coverage

SCHEMA_VERSION = 1
"""report.json's format version. The file is strict JSON (jsontext): a metric that is not a
finite number is the string "NaN", "Infinity" or "-Infinity"; null means not computed."""


KEPT_SHOWN = 5
"""Nodes kept in higher precision that the terminal summary names (report.md lists all)."""


@dataclass
class Checked:
    """What a compile's check found: the accuracy on the check feeds (and the artifact's
    outputs there), at every profile shape, on the golden file; and the latency."""

    accuracy: AccuracyResult
    outputs: list[Feed]
    shapes: list[ShapeCheck] = field(default_factory=list)
    golden: CheckResult | None = None
    latency: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        golden_passed = self.golden is None or self.golden.passed
        return self.accuracy.passed and golden_passed and all(c.passed for c in self.shapes)


def compile_report(
    *,
    recipe: dict[str, Any],
    out: Path,
    model: dict[str, Any],
    records: list[PassRecord],
    first_diverging: str | None,
    build: dict[str, Any],
    checked: Checked,
    data_source: str,
    not_run: tuple[str, str] | None,
    strict: bool,
    unavailable: bool,
    warnings: list[str],
) -> dict[str, Any]:
    """report.json's content (without its `cache` section) and the verdict: a compile passes
    when every check passed, no stage diverged, and (``strict``) no pass was rolled back; a
    compile whose backend was ``unavailable`` is incomplete (exit 2) whatever its accuracy.
    ``not_run``: (backend, why) when the artifact could not run and its graph was checked."""
    rollbacks = [f"pass '{r.name}' rolled back: {r.rolled_back}" for r in records if r.rolled_back]
    strict_failure = strict and bool(rollbacks)
    passed = checked.passed and first_diverging is None and not strict_failure
    exit_code, verdict = (EXIT_OK, "pass") if passed else (EXIT_ACCURACY, "fail")
    if unavailable:  # the accuracy verdict stands; the compile itself is incomplete
        exit_code, verdict = EXIT_USER, "incomplete"
    shapes_passed = all(c.passed for c in checked.shapes)
    failures = [
        *(f"{line} (strict)" for line in (rollbacks if strict_failure else [])),
        *checked.accuracy.failures(),
        *(line for c in checked.shapes for line in c.failures()),
        *(f"golden: {f}" for f in (checked.golden.failures() if checked.golden else [])),
    ]
    if first_diverging:
        failures.insert(0, f"pass '{first_diverging}' is the first whose outputs diverge")
    golden = None
    if checked.golden is not None:
        golden = checked.golden.to_json()
        golden.pop("versions")  # the report's own
    return {
        "schema_version": SCHEMA_VERSION,
        "verdict": verdict,
        "exit_code": exit_code,
        "output_dir": str(out),
        "versions": versions(),
        "recipe": recipe,
        "model": model,
        "passes": [r.to_json() for r in records],
        "first_diverging_pass": first_diverging,
        "rolled_back": rollbacks,
        "build": build,
        "accuracy": {
            **checked.accuracy.to_json(),
            **({} if shapes_passed else {"verdict": "fail"}),
            "data": data_source,
            "failures": failures,
            "profiles": [c.to_json() for c in checked.shapes],
            "checked": checked_what(None if not_run is None else not_run[1]),
            "artifact_not_run": None
            if not_run is None
            else f"the {not_run[0]} artifact itself was not run: {not_run[1]}",
        },
        "golden": golden,
        "latency": checked.latency,
        "kept_in_higher_precision": kept_in_higher_precision(records),
        "quantized_coverage": quantized_coverage(records),
        "warnings": list(warnings),
    }


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
