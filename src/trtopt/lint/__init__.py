"""Lint an ONNX model for a TensorRT target on a CPU, before any GPU time is spent.

First the real TensorRT for RTX ONNX parser (when ``tensorrt_rtx`` is installed) parses the
model and every error it reports is mapped to its ONNX node with a cause and a fix; then the
rules in rules.py, built from TensorRT's published ONNX operator support documentation, check
what the datacenter targets reject or handle badly. Every finding names its rule and node.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..errors import UserError, did_you_mean
from ..model import load_model, save_model
from .parser import parse_errors
from .rules import ERROR, RULES, WARNING, Finding, GraphView, compute_capability
from .support import TARGETS, Target

PARSER_MODULE = "tensorrt_rtx"
PARSER_TITLE = "TensorRT for RTX"


class LintError(UserError):
    """A strict lint found error-level problems (exit 2)."""


@dataclass
class LintReport:
    """The findings of one lint run, and which parser (if any) took part."""

    target: str
    findings: list[Finding] = field(default_factory=list)
    parser: str | None = None
    """'TensorRT for RTX <version>' when the real parser ran; None when it is not installed."""

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == WARNING]

    def to_json(self, rules: bool = True) -> dict:
        """The findings as JSON; ``rules`` adds every rule's summary and source."""
        data = {
            "target": self.target,
            "parser": self.parser,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_json() for f in self.findings],
        }
        if rules:
            data["rules"] = {
                r.name: {"summary": r.summary, "source": r.source} for r in RULES.values()
            }
        return data

    def summary(self) -> str:
        parser = f"parsed with {self.parser}" if self.parser else "no TensorRT parser installed"
        return (
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s) for {self.target} "
            f"({parser})"
        )

    def format(self) -> str:
        return "\n".join([self.summary(), *(f"  {finding}" for finding in self.findings)])


def _target(name: str) -> Target:
    if name not in TARGETS:
        raise UserError(
            f"unknown lint target '{name}'{did_you_mean(name, TARGETS)}; "
            f"choose one of {', '.join(TARGETS)}"
        )
    return TARGETS[name]


def _gist(message: str) -> str:
    """The parser message's most specific line, without TensorRT's source locations."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    line = lines[-1] if lines else message
    return re.sub(r"\.? In \w+ at /\S+", "", line).rstrip(")").strip()


def _parser_findings(model_path: Path) -> tuple[list[Finding], str | None]:
    if importlib.util.find_spec(PARSER_MODULE) is None:
        return [], None
    trt = importlib.import_module(PARSER_MODULE)
    findings = [
        Finding(
            "parser",
            ERROR,
            f"the {PARSER_TITLE} parser rejects it: {issue.cause} ({_gist(issue.message)})",
            issue.fix,
            issue.node,
            issue.op,
        )
        for issue in parse_errors(trt, model_path)
    ]
    return findings, f"{PARSER_TITLE} {trt.__version__}"


def lint_model(
    model: str | Path | onnx.ModelProto,
    target: str = "tensorrt-10",
    profiles: set[str] | None = None,
    strict: bool = False,
    parse: bool = True,
    skip: Collection[str] = (),
    compute_capabilities: Sequence[str] | None = None,
) -> LintReport:
    """Lint ``model`` (a path or a ModelProto) for ``target`` (tensorrt-10, tensorrt-11,
    tensorrt-rtx).

    ``profiles`` names the inputs the build gives optimization profiles (None when unknown);
    ``parse=False`` skips the real parser; ``skip`` names rules not to run;
    ``compute_capabilities`` the GPUs the engine is for ("8.9", "12.0"; None when unknown).
    With ``strict``, error-level findings raise a LintError (exit 2) that lists them.
    """
    spec = _target(target)
    for capability in compute_capabilities or ():
        try:
            compute_capability(capability)
        except ValueError as error:
            raise UserError(str(error)) from None
    path = Path(model) if isinstance(model, (str, Path)) else None
    proto = load_model(path) if path is not None else model
    report = LintReport(target)
    if parse:
        with tempfile.TemporaryDirectory(prefix="trtopt-lint-") as scratch:
            if path is None:
                path = Path(scratch) / "model.onnx"
                save_model(proto, path)
            report.findings, report.parser = _parser_findings(path)
    view = GraphView.of(proto, spec, profiles, compute_capabilities)
    parsed_nodes = {f.node for f in report.findings}
    for rule in RULES.values():
        if rule.name in skip:
            continue
        for finding in rule.check(view):
            # The parser already named this node with its own, more precise, reason.
            if not (finding.level == ERROR and finding.node and finding.node in parsed_nodes):
                report.findings.append(finding)
    if strict and report.errors:
        raise LintError(
            f"{report.summary()}:\n" + "\n".join(f"  {f}" for f in report.errors),
            str(path) if isinstance(model, (str, Path)) else None,
        )
    return report


__all__ = ["RULES", "TARGETS", "Finding", "LintError", "LintReport", "lint_model"]
