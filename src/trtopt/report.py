"""report.json assembled from a compile's typed records (report_text.py writes it out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import versions
from .accuracy import AccuracyResult
from .errors import EXIT_ACCURACY, EXIT_OK, EXIT_USER
from .feeds import Feed
from .gate import CheckResult, ShapeCheck
from .session import ARTIFACT_CHECKED
from .session import checked as checked_what
from .stages import PassRecord, kept_in_higher_precision, quantized_coverage

SCHEMA_VERSION = 1
"""report.json's format version. The file is strict JSON (jsontext): a metric that is not a
finite number is the string "NaN", "Infinity" or "-Infinity"; null means not computed."""


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
            "checked": ARTIFACT_CHECKED
            if not_run is None
            else checked_what(not_run[1], not_run[0]),
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
