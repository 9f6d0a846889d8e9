"""`trtopt diff REPORT_A REPORT_B`: what changed between two compiles (or two checks).

Shown: the verdict, node counts and time per pass, every accuracy metric per output (the
compile's check and its golden check), latency, artifact size and dependency versions.

A regression is judged in one "error space" for every accuracy metric, so that one margin
means the same everywhere: error metrics as they are (max_abs, mean_abs, max_rel,
quantile_abs), ``1 - value`` for cosine, top1 and topk, and the error amplitude relative to the
signal (``10 ** (-dB / 20)``) for snr_db and psnr_db. A metric regressed when B's error exceeds
A's by more than ``margin`` (relative) and ``atol`` (absolute, so that float round-off near zero
never counts). max_rel is listed but not judged: a reference value near zero makes it swing by
orders of magnitude on round-off alone. A verdict that goes from pass to anything else is a
regression. Latency and artifact size regress only when their own margins are given (timings
are noisy). Passes are aligned by name (difflib), so an added or removed pass shows as such.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import jsontext
from .errors import EXIT_ACCURACY, EXIT_OK, UserError
from .formatting import format_value

DEFAULT_MARGIN = 0.1
"""A metric may get 10% worse (in error space) before it counts as a regression."""
DEFAULT_ATOL = 1e-5
"""...and must also get worse by more than this, absolutely."""


@dataclass
class Change:
    section: str
    item: str
    a: Any
    b: Any
    regressed: bool = False
    note: str = ""


@dataclass
class DiffResult:
    a: str
    b: str
    changes: list[Change] = field(default_factory=list)
    margin: float = DEFAULT_MARGIN

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regressed]

    @property
    def exit_code(self) -> int:
        return EXIT_ACCURACY if self.regressions else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "margin": self.margin,
            "regressed": bool(self.regressions),
            "exit_code": self.exit_code,
            "changes": [asdict(c) for c in self.changes],
        }

    def format(self) -> str:
        """A table of what changed, regressions marked, grouped by section."""
        lines = [f"A: {self.a}", f"B: {self.b}"]
        section = None
        for change in self.changes:
            if change.section != section:
                section = change.section
                lines.append(f"\n{section}")
            mark = "REGRESSED " if change.regressed else ""
            note = f"  ({change.note})" if change.note else ""
            lines.append(f"  {mark}{change.item}: {_show(change.a)} -> {_show(change.b)}{note}")
        verdict = (
            f"{len(self.regressions)} regression(s) beyond the margin"
            if self.regressions
            else "no regression beyond the margin"
        )
        return "\n".join([*lines, "", verdict])


def _show(value: Any) -> str:
    return format_value(value, 6)


def load_report(path: str | Path) -> dict[str, Any]:
    """A compile's report.json or a check's JSON; a folder means its report.json."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("report not found", str(path)) from None
    except (OSError, ValueError) as error:
        raise UserError(f"not a readable JSON report: {error}", str(path)) from None
    if not isinstance(report, dict) or "accuracy" not in report:
        raise UserError("not a trtopt report (no `accuracy` section)", str(path))
    return report


def error_space(metric: str, value: float) -> float:
    """A metric as an error (lower is better), comparable across metrics (module doc)."""
    base = metric.removesuffix(" vs baseline")
    if base in ("cosine", "top1", "topk"):
        return 1.0 - value
    if base in ("snr_db", "psnr_db"):
        return 10.0 ** (-value / 20.0)
    return value


NOT_JUDGED = ("max_rel",)


def regressed(metric: str, a: Any, b: Any, margin: float, atol: float) -> bool:
    if metric.removesuffix(" vs baseline") in NOT_JUDGED:
        return False
    na, nb = jsontext.number(a), jsontext.number(b)
    if na is None or nb is None:
        return False
    ea, eb = error_space(metric, na), error_space(metric, nb)
    if math.isnan(eb):  # a metric that became NaN ("NaN" in report.json) is a regression
        return not math.isnan(ea)
    return eb > ea * (1 + margin) + atol


def _accuracy(
    result: DiffResult, section: str, a: Mapping, b: Mapping, margin: float, atol: float
) -> None:
    outputs_a, outputs_b = a.get("outputs") or {}, b.get("outputs") or {}
    for output in dict.fromkeys([*outputs_a, *outputs_b]):
        oa, ob = outputs_a.get(output), outputs_b.get(output)
        if oa is None or ob is None:
            result.changes.append(
                Change(section, output, "present" if oa else None, "present" if ob else None)
            )
            continue
        ma, mb = oa.get("metrics") or {}, ob.get("metrics") or {}
        for metric in dict.fromkeys([*ma, *mb]):
            va, vb = ma.get(metric), mb.get(metric)
            if va is None and vb is None:
                continue
            bad = regressed(metric, va, vb, margin, atol)
            result.changes.append(Change(section, f"{output} {metric}", va, vb, bad))
        if oa.get("error") != ob.get("error"):
            bad = bool(ob.get("error")) and not oa.get("error")
            change = Change(section, f"{output} error", oa.get("error"), ob.get("error"), bad)
            result.changes.append(change)


def diff_reports(
    a: str | Path | Mapping[str, Any],
    b: str | Path | Mapping[str, Any],
    *,
    margin: float = DEFAULT_MARGIN,
    atol: float = DEFAULT_ATOL,
    latency_margin: float | None = None,
    size_margin: float | None = None,
) -> DiffResult:
    """Compare report B with report A (paths, folders or loaded dicts). Every metric and count
    is listed, changed or not; ``exit_code`` is 1 when anything regressed (module doc)."""
    ra = a if isinstance(a, Mapping) else load_report(a)
    rb = b if isinstance(b, Mapping) else load_report(b)
    name_a = "A" if isinstance(a, Mapping) else str(a)
    name_b = "B" if isinstance(b, Mapping) else str(b)
    result = DiffResult(name_a, name_b, margin=margin)
    add = result.changes.append

    va, vb = ra.get("verdict"), rb.get("verdict")
    add(Change("verdict", "verdict", va, vb, va == "pass" and vb != "pass"))

    passes_a, passes_b = ra.get("passes") or [], rb.get("passes") or []
    names_a, names_b = [p["name"] for p in passes_a], [p["name"] for p in passes_b]
    matcher = difflib.SequenceMatcher(None, names_a, names_b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for pa, (j, pb) in zip(passes_a[i1:i2], enumerate(passes_b[j1:j2], j1 + 1)):
                item = f"{j}. {pb['name']}"
                add(Change("passes", f"{item} nodes", pa["nodes_after"], pb["nodes_after"]))
                add(Change("passes", f"{item} seconds", pa["seconds"], pb["seconds"]))
            continue
        for pa in passes_a[i1:i2]:
            add(Change("passes", f"{pa['name']} (removed)", pa["nodes_after"], None))
        for j, pb in enumerate(passes_b[j1:j2], j1 + 1):
            add(Change("passes", f"{j}. {pb['name']} (added)", None, pb["nodes_after"]))

    _accuracy(result, "accuracy", ra["accuracy"], rb["accuracy"], margin, atol)
    # A compile's report holds its golden check; a check's JSON names its golden file there.
    golden = ra.get("golden"), rb.get("golden")
    ga, gb = (g if isinstance(g, Mapping) else None for g in golden)
    files_a, files_b = (g if isinstance(g, str) else None for g in golden)
    if files_a != files_b:
        add(Change("golden", "golden file", files_a, files_b))
    if ga or gb:
        golden_a, golden_b = (ga or {}).get("accuracy") or {}, (gb or {}).get("accuracy") or {}
        _accuracy(result, "golden", golden_a, golden_b, margin, atol)

    la, lb = ra.get("latency") or {}, rb.get("latency") or {}
    for who in ("reference", "artifact"):
        ma = (la.get(who) or {}).get("median_ms")
        mb = (lb.get(who) or {}).get("median_ms")
        if ma is None and mb is None:
            continue
        bad = (
            who == "artifact"
            and latency_margin is not None
            and isinstance(ma, (int, float))
            and isinstance(mb, (int, float))
            and mb > ma * (1 + latency_margin)
        )
        add(Change("latency", f"{who} median ms", ma, mb, bad))

    sa = (ra.get("build") or {}).get("size_bytes")
    sb = (rb.get("build") or {}).get("size_bytes")
    if sa is not None or sb is not None:
        bad = size_margin is not None and sa is not None and sb is not None
        bad = bad and sb > sa * (1 + size_margin)  # type: ignore[operator]
        add(Change("artifact", "size bytes", sa, sb, bool(bad)))

    versions_a, versions_b = ra.get("versions") or {}, rb.get("versions") or {}
    for package in dict.fromkeys([*versions_a, *versions_b]):
        if versions_a.get(package) != versions_b.get(package):
            add(Change("versions", package, versions_a.get(package), versions_b.get(package)))
    return result
