"""A new user's first day (issue 13): models with -1 dims, the default output folder beside the
recipe, recipe shapes that conflict with the model, `diff` on check results, a check of a recipe
whose backend built nothing, the lint pass's findings, and the CLI's small frictions."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import trtopt
from helpers import ROOT, run_cli
from trtopt.backends import BuildResult
from trtopt.cli import main
from trtopt.errors import EXIT_OK, EXIT_USER


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process (as `trtopt ARGS`): exit code, stdout, stderr."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def small_model(path: Path, dims: list[int | str]) -> Path:
    """y = relu(x @ W) for x of shape ``dims`` (last dim 4): -1, 0 or a name for dynamic dims."""
    weights = numpy_helper.from_array(
        np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(4, 3), "W"
    )
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
            helper.make_node("Relu", ["h"], ["y"], name="relu"),
        ],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*dims[:-1], 3])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def small_recipe(folder: Path, dims: list[int | str], extra: str = "") -> Path:
    small_model(folder / "small.onnx", dims)
    path = folder / "small.yaml"
    path.write_text(
        "name: small\n"
        "model: small.onnx\n"
        "passes: [cleanup]\n"
        "check:\n"
        "  samples: 2\n"
        "  latency_runs: 0\n"
        "  golden: golden/small.npz\n" + extra
    )
    return path


# -- 1. -1 dims are dynamic -------------------------------------------------------------------


def test_minus_one_dims_are_dynamic_in_compile_and_check(tmp_path, capsys):
    recipe = small_recipe(tmp_path, [-1, 4])
    trtopt.update_golden(recipe)
    assert trtopt.compile(recipe).exit_code == EXIT_OK
    code, out, err = cli(capsys, "check", str(recipe))
    assert code == EXIT_OK, out + err
    assert "PASS" in out


def test_zero_and_minus_one_dims_read_as_dynamic():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 0, "n", None, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    (info,) = trtopt.feeds.model_inputs(helper.make_model(graph))
    assert info.shape == (None, None, "n", None, 5)
    feed = {"x": np.zeros((3, 7, 2, 1, 5), np.float32)}
    trtopt.feeds.validate_feeds([feed], [info], "test")  # any size where the model says any


# -- 2. the default output folder is beside the recipe ---------------------------------------


def test_default_output_is_beside_the_recipe_from_any_folder(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    recipe = small_recipe(project, ["batch", 4])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    golden = run_cli("golden", "update", str(recipe), cwd=elsewhere)
    assert golden.returncode == 0, golden.stderr
    compiled = run_cli("compile", str(recipe), cwd=elsewhere)
    assert compiled.returncode == 0, compiled.stderr
    assert (project / "build" / "small" / "model.onnx").is_file()
    assert not (elsewhere / "build").exists()
    checked = run_cli("check", str(recipe), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert str(project / "build" / "small" / "model.onnx") in checked.stdout


# -- 3. recipe shapes that conflict with the model --------------------------------------------


def test_recipe_shape_conflicting_with_a_fixed_dim_names_input_dim_and_place(tmp_path):
    recipe = small_recipe(tmp_path, ["batch", 4], "inputs:\n  x: {shape: [batch, 5]}\n")
    result = run_cli("compile", str(recipe), cwd=tmp_path)
    assert result.returncode == EXIT_USER, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{recipe}:9" in result.stderr
    assert "input 'x'" in result.stderr and "dim 1" in result.stderr
    assert "4" in result.stderr and "5" in result.stderr
    assert "golden" not in result.stderr and "Polygraphy" not in result.stderr


def test_symbolic_name_over_a_fixed_dim_needs_its_value_in_check_dims(tmp_path):
    recipe = small_recipe(tmp_path, [1, 4], "inputs:\n  x: {shape: [rows, 4]}\n")
    no_golden = ("--set", "check.golden=null")
    result = run_cli("compile", str(recipe), *no_golden, cwd=tmp_path)
    assert result.returncode == EXIT_USER, result.stderr
    assert "'rows'" in result.stderr and "check.dims" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    wrong = run_cli("compile", str(recipe), *no_golden, "--set", "check.dims.rows=3", cwd=tmp_path)
    assert wrong.returncode == EXIT_USER, wrong.stderr
    assert "dim 0 is fixed at 1" in wrong.stderr and "3" in wrong.stderr
    fine = run_cli("compile", str(recipe), *no_golden, "--set", "check.dims.rows=1", cwd=tmp_path)
    assert fine.returncode == 0, fine.stderr


# -- 4. diff reads check results as well as compile reports -----------------------------------


def test_diff_compares_reports_and_check_results(tmp_path, capsys):
    recipe = small_recipe(tmp_path, ["batch", 4])
    trtopt.update_golden(recipe)
    compiled = trtopt.compile(recipe)
    report = compiled.output_dir / "report.json"
    code, out, _ = cli(capsys, "check", str(recipe), "--json")
    assert code == EXIT_OK
    checked = tmp_path / "check.json"
    checked.write_text(out)
    for path in (report, checked):
        code, out, err = cli(capsys, "diff", str(path), str(path))
        assert code == EXIT_OK, err
        assert "no regression" in out and "y cosine" in out
    code, out, err = cli(capsys, "diff", str(report), str(checked), "--json")
    assert code == EXIT_OK, err
    items = {change["item"] for change in json.loads(out)["changes"]}
    assert "y max_abs" in items


# -- 5. a recipe whose backend built nothing does not pass its check --------------------------


def test_check_of_a_recipe_whose_backend_built_nothing_is_not_a_pass(tmp_path, capsys):
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes", ignore=shutil.ignore_patterns("build"))
    shutil.copytree(ROOT / "golden", tmp_path / "golden")
    recipe = str(tmp_path / "recipes" / "quickstart-tensorrt.yaml")
    fast = ["--set", "check.samples=2", "--set", "check.latency_runs=0", "--set", "passes=[]"]
    out_dir = tmp_path / "recipes" / "build" / "quickstart-tensorrt"
    with pytest.MonkeyPatch.context() as patch:  # whether TensorRT is installed or not
        patch.setattr(trtopt.backends.tensorrt, "unavailable_reason", lambda flavour: "no GPU")
        code, _, err = cli(capsys, "compile", recipe, *fast)
    assert code == EXIT_USER, err
    assert json.loads((out_dir / "report.json").read_text())["build"]["status"] == "unavailable"
    code, out, err = cli(capsys, "check", recipe)
    assert code == EXIT_USER, out + err
    assert "no engine to check" in err and "model.engine" in err and "--artifact" in err
    code, out, err = cli(capsys, "check", recipe, "--artifact", str(out_dir / "model.onnx"))
    assert code == EXIT_OK, out + err
    assert f"checked  {out_dir / 'model.onnx'}" in out


# -- 6. the lint pass reports its findings and agrees with the recipe -------------------------


def test_lint_pass_reports_findings_and_trusts_the_recipe_profile(tmp_path, capsys):
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE, name="to_double"),
            helper.make_node("Cast", ["d"], ["y"], to=TensorProto.FLOAT, name="to_float"),
        ],
        "casts",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "casts.onnx"))
    recipe = tmp_path / "casts.yaml"
    recipe.write_text(
        "name: casts\n"
        "model: casts.onnx\n"
        "inputs:\n"
        "  x: {profile: {min: [1, 4], opt: [2, 4], max: [8, 4]}}\n"
        "passes:\n"
        "  - lint: {parse: false, strict: false}\n"
        "check: {samples: 2, latency_runs: 0}\n"
    )
    result = trtopt.compile(recipe)
    assert result.exit_code == EXIT_OK
    report = json.loads((result.output_dir / "report.json").read_text())
    details = report["passes"][0]["details"]
    rules = [finding["rule"] for finding in details["findings"]]
    assert rules == ["dtype"] and details["warnings"] == 1 and details["target"] == "tensorrt-10"
    # The bare model has no recipe: there the missing profile is worth a warning.
    code, out, _ = cli(capsys, "lint", str(tmp_path / "casts.onnx"), "--no-parse")
    assert code == EXIT_OK and "dynamic-shape" in out


# -- 7. first-day frictions of the CLI ---------------------------------------------------------


def test_debug_is_accepted_after_the_verb(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("name: x\nmodel: nope.onnx\n")
    for args in (["--debug", "validate", "r.yaml"], ["validate", "r.yaml", "--debug"]):
        code, _, err = cli(capsys, *[str(tmp_path / a) if a == "r.yaml" else a for a in args])
        assert code == EXIT_USER
        assert "Traceback" in err and "model file not found" in err
    code, _, err = cli(capsys, "validate", str(tmp_path / "r.yaml"))
    assert code == EXIT_USER and "Traceback" not in err


def test_validate_names_a_missing_model_file(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("name: x\nmodel: nope.onnx\n")
    code, out, err = cli(capsys, "validate", str(tmp_path / "r.yaml"))
    assert code == EXIT_USER and "ok" not in out
    assert err.strip() == f"error: {tmp_path / 'r.yaml'}:2:1: model file not found: " + str(
        tmp_path / "nope.onnx"
    )


def test_optimize_suggests_a_pass_for_a_short_name(tmp_path, capsys):
    model = small_model(tmp_path / "m.onnx", ["batch", 4])
    code, _, err = cli(capsys, "optimize", str(model), str(tmp_path / "o.onnx"), "--passes", "fold")
    assert code == EXIT_USER
    assert "unknown pass 'fold'; did you mean 'fold-constants'?" in err and "--passes" in err
    assert not (tmp_path / "o.onnx").exists()


def test_passes_prints_recipe_values_and_documents_every_option():
    # A fresh process: plugin passes other tests registered in this one would be listed too.
    listed = run_cli("passes")
    assert listed.returncode == EXIT_OK, listed.stderr
    out = listed.stdout
    assert "size_threshold (default: 16MiB)" in out
    assert "op_types=" not in out and "16777216" not in out and '"' not in out
    assert "- dtype (default: fp16): one of fp16 | bf16" in out
    assert "    - keep_fp32:" in out and "        - nodes (default: []): Regexes" in out
    assert "- exclude:" in out and "Op types never quantized" in out
    options = [line for line in out.splitlines() if line.lstrip().startswith("- ")]
    undocumented = [
        line for line in options if not re.match(r"\s*- \w+( \(default: .*\))?: \S", line)
    ]
    assert options and not undocumented


# -- 8. a readable histogram at any count; the artifact's own size ----------------------------


@pytest.mark.parametrize("count", [3_000_000, 40, 10])
def test_error_histogram_counts_are_plain_integers(count):
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure()
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    error = np.concatenate([np.zeros(count), np.linspace(0.0, 1e-3, 1000)])
    trtopt.html.error_histogram(axes, error)
    figure.canvas.draw()
    low, high = axes.get_ylim()
    labels = [
        tick.label1.get_text()
        for tick in axes.yaxis.get_major_ticks()
        if low <= tick.get_loc() <= high and tick.label1.get_text()
    ]
    assert axes.yaxis.get_offset_text().get_text() == ""
    assert labels and all(re.fullmatch(r"[0-9][0-9,]*", label) for label in labels), labels
    if count > 1000:
        assert "1,000,000" in labels


class _EngineBackend:
    """A backend that 'builds' a 1000-byte engine and a 500-byte build log (no TensorRT)."""

    name = "tensorrt"

    def unavailable(self) -> None:
        return None

    def build(self, model_path: Path, out_dir: Path) -> BuildResult:
        engine, log = out_dir / "model.engine", out_dir / "build.log"
        engine.write_bytes(b"e" * 1000)
        log.write_bytes(b"l" * 500)
        return BuildResult(self.name, engine, 0.0, files=[log])

    def cannot_run(self, build: BuildResult) -> str:
        return "a test engine"


def test_size_is_the_artifacts_own_and_diff_gates_on_it(tmp_path, monkeypatch):
    monkeypatch.setattr(trtopt.pipeline, "get_backend", lambda *args: _EngineBackend())
    recipe = small_recipe(tmp_path, ["batch", 4])
    result = trtopt.compile(recipe, overrides=["check.golden=null"], use_cache=False)
    build = result.report["build"]
    onnx_size = (result.output_dir / "model.onnx").stat().st_size
    assert build["artifact"] == "model.engine" and build["size_bytes"] == 1000
    assert build["total_bytes"] == 1000 + 500 + onnx_size
    grown = json.loads(json.dumps(result.report))
    grown["build"]["total_bytes"] *= 3  # other outputs grew, the engine did not
    assert trtopt.diff_reports(result.report, grown, size_margin=0.1).exit_code == EXIT_OK
    grown["build"]["size_bytes"] = 1200
    assert trtopt.diff_reports(result.report, grown, size_margin=0.1).exit_code == 1
