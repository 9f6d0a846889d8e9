"""Long work shows progress: tqdm lines in a log (no terminal), nothing with --quiet; the
automatic search keeps the best it found when its time budget runs out."""

from __future__ import annotations

import trtopt
from helpers import MODELS, run_cli

AUTO = {"quantize": {"auto": {"metric": "cosine", "min": 0.99999, "samples": 2}}}


def test_calibration_and_latency_runs_print_progress_lines_unless_quiet(write_recipe, recipe_for):
    recipe = recipe_for(MODELS / "cnn_legacy.onnx", passes=["quantize"])
    recipe["check"]["verify_passes"] = False
    path = write_recipe(recipe)
    every = {"TRTOPT_PROGRESS_SECONDS": "0"}  # a line at once: this work is quick
    shown = run_cli("compile", str(path), "--no-cache", env=every)
    assert shown.returncode in (0, 1), shown.stderr
    lines = shown.stderr.splitlines()
    assert any(line.startswith("calibrate:") and "feed" in line for line in lines)
    assert any(line.startswith("latency (reference, artifact):") for line in lines)
    assert not any("\r" in line for line in lines)  # whole lines for CI logs
    quiet = run_cli("compile", str(path), "--no-cache", "--quiet", env=every)
    assert quiet.returncode == shown.returncode
    assert "calibrate:" not in quiet.stderr and "latency (" not in quiet.stderr
    # By default quick work prints nothing: test_cli's quickstart test holds that.


def test_the_search_keeps_the_best_found_when_its_time_budget_runs_out(
    write_recipe, recipe_for, tmp_path
):
    budget = {"quantize": {"auto": {**AUTO["quantize"]["auto"], "max_minutes": 0}}}
    recipe = recipe_for(MODELS / "cnn_legacy.onnx", passes=[budget])
    overrides = ["check.latency_runs=0", "check.verify_passes=false"]
    result = trtopt.compile(write_recipe(recipe), tmp_path / "o", overrides=overrides)
    record = result.report["passes"][0]
    auto = record["details"]["auto"]
    assert auto["out_of_time"] is True
    assert auto["evaluations"] <= 2  # every layer lowered, then every layer kept
    placed = record["details"]["placement"]
    assert {k["node"] for k in auto["kept"]} == set(placed)  # nothing measured: all in float
    assert any("time budget (0 min) ran out" in w for w in result.report["warnings"])
