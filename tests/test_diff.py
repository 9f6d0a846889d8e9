"""`trtopt diff`: what changed between two reports, and a non-zero exit on regression."""

from __future__ import annotations

import copy
import json

import pytest

import trtopt
from trtopt.cli import main
from trtopt.diff import error_space, regressed
from trtopt.errors import EXIT_ACCURACY, EXIT_OK, EXIT_USER


def _report(**metrics: float) -> dict:
    values = {
        "max_abs": 1e-3,
        "mean_abs": 1e-4,
        "max_rel": 0.01,
        "quantile_abs": 5e-4,
        "cosine": 0.9999,
        "snr_db": 60.0,
        "psnr_db": 70.0,
        "top1": 1.0,
        "topk": 1.0,
        **metrics,
    }
    return {
        "verdict": "pass",
        "passes": [
            {"name": "cleanup", "nodes_after": 29, "seconds": 0.01},
            {"name": "fold-constants", "nodes_after": 25, "seconds": 0.02},
        ],
        "accuracy": {"outputs": {"logits": {"metrics": values, "checks": [], "error": None}}},
        "latency": {"reference": {"median_ms": 1.0}, "artifact": {"median_ms": 0.5}},
        "build": {"size_bytes": 1000},
        "versions": {"onnxruntime": "1.20.0", "trtopt": "0.1.0"},
    }


def _write(tmp_path, name, report):
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return str(path)


def test_identical_reports_do_not_regress():
    result = trtopt.diff_reports(_report(), _report())
    assert result.exit_code == EXIT_OK and not result.regressions
    items = {c.item for c in result.changes}
    assert {"1. cleanup nodes", "2. fold-constants seconds", "logits cosine"} <= items
    assert "size bytes" in items and "artifact median ms" in items


@pytest.mark.parametrize(
    ("metric", "worse"),
    [
        ("max_abs", 2e-3),
        ("quantile_abs", 1e-3),
        ("cosine", 0.999),
        ("snr_db", 50.0),
        ("psnr_db", 60.0),
        ("top1", 0.9),
        ("topk", 0.95),
    ],
)
def test_each_metric_regresses_beyond_the_margin(metric, worse):
    result = trtopt.diff_reports(_report(), _report(**{metric: worse}))
    assert result.exit_code == EXIT_ACCURACY
    assert [c.item for c in result.regressions] == [f"logits {metric}"]


def test_changes_within_margin_and_round_off_do_not_regress():
    small = _report(max_abs=1.05e-3, cosine=0.99989, snr_db=59.5, max_rel=100.0)
    assert trtopt.diff_reports(_report(), small).exit_code == EXIT_OK
    # From exactly zero to float round-off is no regression either (atol).
    zero = _report(max_abs=0.0, snr_db=200.0)
    noise = _report(max_abs=5e-6, snr_db=113.0)
    assert trtopt.diff_reports(zero, noise).exit_code == EXIT_OK
    assert error_space("snr_db", 20.0) == pytest.approx(0.1)
    assert regressed("cosine", 0.9999, 0.999, margin=0.1, atol=1e-5)
    assert not regressed("cosine", 0.999, 0.9999, margin=0.1, atol=1e-5)  # better


def test_verdict_passes_latency_size_and_versions():
    a, b = _report(), copy.deepcopy(_report())
    b["verdict"] = "fail"
    b["passes"].insert(1, {"name": "fuse", "nodes_after": 19, "seconds": 0.01})
    b["latency"]["artifact"]["median_ms"] = 1.0
    b["build"]["size_bytes"] = 2000
    b["versions"]["onnxruntime"] = "1.21.0"
    result = trtopt.diff_reports(a, b)
    assert [c.item for c in result.regressions] == ["verdict"]
    changes = {c.item: c for c in result.changes}
    assert changes["2. fuse (added)"].b == 19 and changes["3. fold-constants nodes"].a == 25
    assert (changes["onnxruntime"].a, changes["onnxruntime"].b) == ("1.20.0", "1.21.0")
    assert "trtopt" not in changes  # unchanged versions are not listed
    gated = trtopt.diff_reports(a, b, latency_margin=0.5, size_margin=0.5)
    assert {c.item for c in gated.regressions} == {"verdict", "artifact median ms", "size bytes"}


def test_golden_sections_are_compared():
    a, b = _report(), _report()
    a["golden"] = {"accuracy": copy.deepcopy(a["accuracy"])}
    b["golden"] = {"accuracy": copy.deepcopy(a["accuracy"])}
    b["golden"]["accuracy"]["outputs"]["logits"]["metrics"]["max_abs"] = 1.0
    result = trtopt.diff_reports(a, b)
    assert [(c.section, c.item) for c in result.regressions] == [("golden", "logits max_abs")]


def test_cli_prints_changes_and_exits_1_on_regression(tmp_path, capsys):
    a = _write(tmp_path, "a.json", _report())
    b = _write(tmp_path, "b.json", _report(cosine=0.99))
    assert main(["diff", a, a]) == EXIT_OK
    assert "no regression beyond the margin" in capsys.readouterr().out
    assert main(["diff", a, b]) == EXIT_ACCURACY
    out = capsys.readouterr().out
    assert "REGRESSED logits cosine: 0.9999 -> 0.99" in out and "1 regression(s)" in out
    assert main(["diff", a, b, "--margin", "1000"]) == EXIT_OK
    capsys.readouterr()
    assert main(["diff", a, b, "--json"]) == EXIT_ACCURACY
    data = json.loads(capsys.readouterr().out)
    assert data["regressed"] is True and data["exit_code"] == 1
    assert any(c["item"] == "logits cosine" and c["regressed"] for c in data["changes"])


def test_missing_or_foreign_report_exits_2(tmp_path, capsys):
    a = _write(tmp_path, "a.json", _report())
    assert main(["diff", a, str(tmp_path / "none.json")]) == EXIT_USER
    assert "none.json: report not found" in capsys.readouterr().err
    other = _write(tmp_path, "other.json", {"hello": 1})
    assert main(["diff", a, other]) == EXIT_USER
    assert "not a trtopt report" in capsys.readouterr().err
