"""The shipped recipes gate themselves: each compiles (its golden check included), passes
`trtopt check` against its golden file, and its final graph builds with TensorRT for RTX for two
compute capabilities, so a pass that moves any recipe's outputs past its thresholds, or emits a
graph TensorRT refuses, fails CI. One compile per recipe serves all three."""

from __future__ import annotations

import json

import pytest

import trt_rtx
import trtopt
from gate_helpers import shipped_recipes
from trtopt.cli import main
from trtopt.errors import EXIT_OK, BackendUnavailableError


@pytest.mark.slow
@pytest.mark.parametrize("recipe", shipped_recipes(), ids=lambda p: p.stem)
def test_shipped_recipe_compiles_and_passes_trtopt_check(recipe, tmp_path, capsys):
    out = tmp_path / "out"
    overrides = ["check.latency_runs=0"]
    artifact = out
    try:
        result = trtopt.compile(recipe, output_dir=out, overrides=overrides, use_cache=False)
    except BackendUnavailableError:
        # No TensorRT here: everything else ran and the report (and final graph) was written;
        # with no engine, the check is of the final graph, named.
        artifact = out / "model.onnx"
    else:
        assert result.exit_code == EXIT_OK, result.report["accuracy"]["failures"]
        assert result.report["golden"]["verdict"] == "pass"
        if any("quantize" in str(item) for item in result.report["recipe"]["passes"]):
            assert (out / "calibration.cache").is_file()  # TensorRT's own calibration table
    code = main(["check", str(recipe), "--artifact", str(artifact)])
    output = capsys.readouterr().out
    assert code == EXIT_OK, output
    assert ": PASS" in output.splitlines()[0]
    # Built ahead of time on this CPU: Ampere (no FP8) and Blackwell. An INT8 graph placed for
    # ONNX Runtime's CPU kernels (INT32 biases, UINT8 zero points) is not TensorRT's to build.
    ran = json.loads((out / "report.json").read_text())["recipe"]["passes"]
    for_onnxruntime = any(p["options"].get("placement") == "onnxruntime" for p in ran)
    if not for_onnxruntime:
        assert trt_rtx.build_for(out / "model.onnx", ("SM86", "SM120")) is not None
