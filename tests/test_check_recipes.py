"""The shipped recipes gate themselves: each compiles (its golden check included) and then
passes `trtopt check` against its golden file, so a pass that moves any recipe's outputs past
its thresholds fails CI."""

from __future__ import annotations

import pytest

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
    code = main(["check", str(recipe), "--artifact", str(artifact)])
    output = capsys.readouterr().out
    assert code == EXIT_OK, output
    assert ": PASS" in output.splitlines()[0]
