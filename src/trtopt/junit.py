"""JUnit XML for CI systems: one test case per output and metric.

A gated metric is a test case that passes or fails (the failure names the output, the metric,
its value and limit); a metric that is measured but not gated is a skipped test case, so the
CI's test view lists every number; an output that could not be compared (missing, other
shape) is a failing case named ``output``. The shape is the common JUnit one that Jenkins,
GitLab, GitHub Actions reporters and ``junitparser`` read:
``testsuites > testsuite > testcase > (failure | skipped)``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError

Suite = tuple[str, Mapping[str, Any]]
"""(suite name, an ``accuracy`` section of a report or check result)."""


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _cases(suite: ET.Element, classname: str, accuracy: Mapping[str, Any]) -> dict[str, int]:
    counts = {"tests": 0, "failures": 0, "skipped": 0}
    for output, result in (accuracy.get("outputs") or {}).items():
        prefix = f"{classname}.{output}"
        if result.get("error"):
            case = ET.SubElement(suite, "testcase", classname=prefix, name="output", time="0")
            failure = ET.SubElement(case, "failure", type="output")
            failure.set("message", f"{output}: {result['error']}")
            failure.text = f"{output}: {result['error']}"
            counts["tests"] += 1
            counts["failures"] += 1
            continue
        gated = {c["metric"]: c for c in result.get("checks") or []}
        metrics = [(m, v) for m, v in (result.get("metrics") or {}).items() if v is not None]
        metrics += [(m, c["value"]) for m, c in gated.items() if m not in dict(metrics)]
        for metric, value in metrics:
            case = ET.SubElement(suite, "testcase", classname=prefix, name=metric, time="0")
            counts["tests"] += 1
            check = gated.get(metric)
            if check is None:
                ET.SubElement(case, "skipped", message=f"not gated (value {_num(value)})")
                counts["skipped"] += 1
                continue
            against = (
                f", baseline {_num(check['baseline'])}" if check.get("baseline") is not None else ""
            )
            text = f"{output}: {metric} = {_num(value)} (limit {_num(check['limit'])}{against})"
            if not check["passed"]:
                failure = ET.SubElement(case, "failure", type="threshold", message=text)
                failure.text = text
                counts["failures"] += 1
            else:
                ET.SubElement(case, "system-out").text = text
    return counts


def junit_xml(suites: Sequence[Suite], extra_failures: Sequence[tuple[str, str]] = ()) -> str:
    """The JUnit XML document for ``suites``; ``extra_failures`` are (case name, message)
    pairs of failures that belong to no output (e.g. the first pass whose outputs diverge)."""
    root = ET.Element("testsuites", name="trtopt")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for name, accuracy in suites:
        suite = ET.SubElement(root, "testsuite", name=name)
        counts = _cases(suite, "trtopt." + name.replace(" ", "."), accuracy)
        if not counts["tests"]:
            continue
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("errors", "0")
        suite.set("time", "0")
    if extra_failures:
        suite = ET.SubElement(root, "testsuite", name="pipeline")
        for case_name, message in extra_failures:
            case = ET.SubElement(suite, "testcase", classname="trtopt.pipeline", name=case_name)
            case.set("time", "0")
            failure = ET.SubElement(case, "failure", type="pipeline", message=message)
            failure.text = message
        count = str(len(extra_failures))
        for key, value in (("tests", count), ("failures", count), ("skipped", "0")):
            suite.set(key, value)
        suite.set("errors", "0")
        suite.set("time", "0")
        totals["tests"] += len(extra_failures)
        totals["failures"] += len(extra_failures)
    for empty in [s for s in root if not s.get("tests")]:
        root.remove(empty)
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("errors", "0")
    for element in root.iter():
        element.text = _xml_text(element.text)
        element.attrib = {key: _xml_text(value) or "" for key, value in element.attrib.items()}
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def report_suites(report: Mapping[str, Any]) -> tuple[list[Suite], list[tuple[str, str]]]:
    """The suites (and pipeline failures) of a compile report or a check result."""
    if report.get("kind") == "check":
        return [(f"check {report.get('recipe') or 'artifact'}", report["accuracy"])], []
    name = (report.get("recipe") or {}).get("name", "compile")
    suites: list[Suite] = [(f"compile {name}", report["accuracy"])]
    if report.get("golden"):
        suites.append((f"golden {name}", report["golden"]["accuracy"]))
    extra = []
    if report.get("first_diverging_pass"):
        diverging = report["first_diverging_pass"]
        extra.append(("verify_passes", f"pass '{diverging}' is the first whose outputs diverge"))
    return suites, extra


def write_junit(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write the JUnit XML of a compile report or check result to ``path``."""
    path = Path(path)
    suites, extra = report_suites(report)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(junit_xml(suites, extra), encoding="utf-8")
    except OSError as error:
        raise UserError(
            f"cannot write the JUnit file: {error.strerror or error}", str(path)
        ) from None
    return path


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
"""Characters XML 1.0 cannot hold, even escaped (a control character in an output name)."""


def _xml_text(text: str | None) -> str | None:
    """``text`` with each character XML cannot hold written as ``\\xNN``, visibly."""
    if text is None:
        return None
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
