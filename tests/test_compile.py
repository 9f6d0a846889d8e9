"""End-to-end compiles of the exported models: artifact, report, verdicts, staging."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import trtopt
from helpers import EXPORTED, MODELS, assert_same_outputs, model_feeds, ort_run
from trtopt import DataError, PassError

PERTURB_PLUGIN = '''
import numpy as np
import onnx_graphsurgeon as gs
from trtopt import Pass, PassOptions, register_pass


@register_pass("perturb-weights")
class PerturbWeights(Pass):
    """Scale the first large weight (a deliberately wrong pass)."""

    exact = False  # declares that it changes the numbers: the check judges it

    class Options(PassOptions):
        scale: float = 1.5

    def run(self, graph, ctx):
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and tensor.values.size > 100:
                tensor.values = (tensor.values * self.options.scale).astype(tensor.values.dtype)
                tensor.name = tensor.name + "_scaled"
                return graph
        return graph


@register_pass("sneaky-perturb")
class SneakyPerturb(PerturbWeights):
    """The same wrong pass, claiming to keep the numbers (the default)."""

    exact = True


@register_pass("explode")
class Explode(Pass):
    """Fail like a buggy pass."""

    def run(self, graph, ctx):
        raise RuntimeError("boom")


@register_pass("quit")
class Quit(Pass):
    """User code that tries to end trtopt with success."""

    def run(self, graph, ctx):
        raise SystemExit(0)
'''


@pytest.mark.parametrize("model_path", EXPORTED, ids=lambda p: p.stem)
def test_compile_exported_models(model_path, recipe_for, write_recipe, tmp_path):
    recipe = recipe_for(model_path, output=str(tmp_path / "out"))
    result = trtopt.compile(write_recipe(recipe))
    assert result.exit_code == 0, result.report["accuracy"]["failures"]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        ".trtopt-output",
        "model.onnx",
        "report.html",
        "report.json",
        "report.md",
    ]
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    assert report["schema_version"] == 1 and report["verdict"] == "pass"
    assert report["model"]["sha256"] and report["versions"]["onnxruntime"]
    assert [p["name"] for p in report["passes"]] == recipe["passes"]
    assert all(p["verification"]["verdict"] == "pass" for p in report["passes"])
    assert report["build"]["backend"] == "onnxruntime" and len(report["build"]["sha256"]) == 64
    assert report["latency"]["reference"]["median_ms"] > 0
    model = onnx.load(str(out / "model.onnx"))
    names = [o.name for o in model.graph.output]
    assert list(report["accuracy"]["outputs"]) == names
    data = model_feeds(onnx.load(str(model_path)))
    assert_same_outputs(ort_run(model_path, data), ort_run(out / "model.onnx", data))


def test_compile_is_deterministic(recipe_for, write_recipe, tmp_path):
    recipe = write_recipe(recipe_for(MODELS / "bert_legacy.onnx"))
    first = trtopt.compile(recipe, output_dir=tmp_path / "a")
    second = trtopt.compile(recipe, output_dir=tmp_path / "b")
    assert first.artifact.read_bytes() == second.artifact.read_bytes()


def test_accuracy_failure_writes_artifact_and_names_output_and_metric(
    recipe_for, write_recipe, tmp_path
):
    (tmp_path / "bad.py").write_text(PERTURB_PLUGIN)
    recipe = recipe_for(
        MODELS / "cnn_legacy.onnx",
        plugins=["bad.py"],
        passes=["cleanup", "perturb-weights", "fold-constants"],
        output="out",
    )
    recipe["check"]["outputs"] = {"logits": {"class_scores": True}}
    result = trtopt.compile(write_recipe(recipe))
    assert result.exit_code == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == "fail" and report["exit_code"] == 1
    logits = report["accuracy"]["outputs"]["logits"]
    assert logits["verdict"] == "fail"
    failed = {c["metric"] for c in logits["checks"] if not c["passed"]}
    assert "max_abs" in failed
    assert report["first_diverging_pass"] == "perturb-weights"
    assert [p["verification"]["verdict"] for p in report["passes"]] == ["pass", "fail", "fail"]
    assert any(line.startswith("logits: max_abs") for line in report["accuracy"]["failures"])
    assert (tmp_path / "out" / "model.onnx").is_file()
    assert "**FAIL**" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("culprit", ["sneaky-perturb", "explode"])
def test_a_pass_that_breaks_the_model_is_rolled_back_and_named(
    culprit, recipe_for, write_recipe, tmp_path
):
    (tmp_path / "bad.py").write_text(PERTURB_PLUGIN)
    recipe = recipe_for(
        MODELS / "cnn_legacy.onnx",
        plugins=["bad.py"],
        passes=["cleanup", culprit, "fold-constants"],
        output="out",
    )
    result = trtopt.compile(write_recipe(recipe))
    assert result.exit_code == 0, result.report["accuracy"]["failures"]
    record = result.report["passes"][1]
    expected = "is allowed" if culprit == "sneaky-perturb" else "RuntimeError: boom"
    assert expected in record["rolled_back"] and not record["changed"]
    assert result.report["passes"][2]["rolled_back"] is None
    assert any(w.startswith(f"pass '{culprit}' rolled back") for w in result.report["warnings"])
    assert "rolled back" in (tmp_path / "out" / "report.md").read_text()
    assert "rolled back" in (tmp_path / "out" / "report.html").read_text()
    assert f"WARN pass '{culprit}' rolled back" in result.summary()
    assert "passes   2 kept, 1 rolled back" in result.summary()
    # The artifact computes what the original does.
    data = model_feeds(onnx.load(str(MODELS / "cnn_legacy.onnx")))
    assert_same_outputs(
        ort_run(MODELS / "cnn_legacy.onnx", data), ort_run(tmp_path / "out" / "model.onnx", data)
    )

    strict = trtopt.compile(write_recipe(dict(recipe, strict=True)))
    assert strict.exit_code == 1 and strict.report["verdict"] == "fail"
    assert strict.report["accuracy"]["failures"][0].startswith(f"pass '{culprit}' rolled back")


def test_failed_compile_keeps_the_previous_output(recipe_for, write_recipe, tmp_path):
    (tmp_path / "bad.py").write_text(PERTURB_PLUGIN)
    good = recipe_for(MODELS / "cnn_dynamo.onnx", output="out", plugins=["bad.py"])
    trtopt.compile(write_recipe(good))
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    broken = dict(good, passes=["cleanup", "quit"])
    with pytest.raises(PassError) as info:
        trtopt.compile(write_recipe(broken))
    assert "pass 'quit' failed: called sys.exit(0)" in str(info.value)
    assert str(info.value).startswith(f"{tmp_path / 'recipe.yaml'}:")
    assert info.value.exit_code == 3
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.py", "out", "recipe.yaml"]


def test_npz_check_data(recipe_for, write_recipe, tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        np.savez(
            tmp_path / f"sample{i}.npz", pixel_values=rng.random((2, 3, 32, 32), dtype=np.float32)
        )
    recipe = recipe_for(MODELS / "cnn_legacy.onnx", output="out")
    recipe["check"]["data"] = {"npz": "sample*.npz"}
    recipe["check"]["samples"] = 5
    result = trtopt.compile(write_recipe(recipe))
    assert result.exit_code == 0
    assert result.report["accuracy"]["samples"] == 3
    assert result.report["accuracy"]["data"].startswith("npz: ")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"pixels": np.zeros((1, 3, 32, 32), np.float32)},
            r"input names do not match the model: missing \['pixel_values'\]",
        ),
        (
            {"pixel_values": np.zeros((1, 3, 32, 32), np.float64)},
            "input 'pixel_values' has dtype float64, the model expects float32",
        ),
        (
            {"pixel_values": np.zeros((1, 3, 16, 16), np.float32)},
            r"input 'pixel_values' has shape \[1, 3, 16, 16\], the model expects \['batch', 3, 32",
        ),
    ],
)
def test_mismatched_npz_data_is_a_user_error(recipe_for, write_recipe, tmp_path, arrays, message):
    np.savez(tmp_path / "data.npz", **arrays)
    recipe = recipe_for(MODELS / "cnn_legacy.onnx", output="out")
    recipe["check"]["data"] = {"npz": "data.npz"}
    with pytest.raises(DataError, match=message) as info:
        trtopt.compile(write_recipe(recipe))
    assert "data.npz" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_input_overrides_are_checked_and_applied(recipe_for, write_recipe, tmp_path):
    recipe = recipe_for(MODELS / "bert_dynamo.onnx", output="out")
    recipe["inputs"]["input_ids"]["shape"] = [1, "seq"]
    recipe["inputs"]["attention_mask"]["shape"] = [1, "seq"]
    recipe["check"]["dims"] = {"seq": 5}
    result = trtopt.compile(write_recipe(recipe))
    assert result.exit_code == 0
    model = onnx.load(str(result.artifact))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert (dims[0].dim_value, dims[1].dim_param) == (1, "seq")

    recipe["inputs"]["input_idz"] = {"range": [0, 1]}
    with pytest.raises(DataError, match="no model input named 'input_idz'; did you mean"):
        trtopt.compile(write_recipe(recipe))
