"""Every CLI verb and exit code, through a subprocess as a user or a pipeline runs it."""

from __future__ import annotations

import json
import re
import shutil

import onnx
import pytest

from helpers import MODELS, QUICKSTART, ROOT, run_cli

SCALE_PLUGIN = """
import numpy as np
import onnx_graphsurgeon as gs
from trtopt import Pass, register_pass


@register_pass("scale-output")
class ScaleOutput(Pass):
    \"\"\"Multiply the first graph output by 1.01 (a deliberately wrong pass).\"\"\"

    exact = False  # changes the numbers on purpose: the accuracy check judges it

    def run(self, graph, ctx):
        out = graph.outputs[0]
        hidden = gs.Variable(out.name + "_unscaled", dtype=out.dtype)
        producer = out.inputs[0]
        producer.outputs[producer.outputs.index(out)] = hidden
        scale = gs.Constant("scale_1_01", np.array(1.01, dtype=np.float32))
        graph.layer(op="Mul", inputs=[hidden, scale], outputs=[out])
        return graph
"""

BOOM_PLUGIN = """
from trtopt import Pass, register_pass


@register_pass("boom")
class Boom(Pass):
    \"\"\"Fail like a buggy pass.\"\"\"

    def run(self, graph, ctx):
        raise ValueError("kaput")
"""


def test_quickstart_compiles_with_summary_and_report(tmp_path):
    result = run_cli("compile", str(QUICKSTART), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("quickstart: PASS")
    assert "accuracy pass (8 samples)" in result.stdout
    assert result.stderr == ""  # no progress noise without a terminal
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for key in ("schema_version", "model", "passes", "build", "accuracy", "latency"):
        assert key in report
    assert (
        report["model"]["sha256"]
        == __import__("hashlib")
        .sha256((ROOT / "recipes" / "models" / "quickstart.onnx").read_bytes())
        .hexdigest()
    )
    assert report["passes"][0]["nodes_before"] == 29
    assert report["passes"][-1]["nodes_after"] < 29
    artifact = report["latency"]["artifact"]
    assert artifact["p99_ms"] >= artifact["p90_ms"] >= artifact["median_ms"] > 0
    assert artifact["throughput_per_s"] == pytest.approx(4 * 1e3 / artifact["median_ms"])


def test_compile_set_override_and_default_output(tmp_path):
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes", ignore=shutil.ignore_patterns("build"))
    shutil.copytree(ROOT / "golden", tmp_path / "golden")  # the recipes' check.golden
    result = run_cli(
        "compile",
        "recipes/quickstart.yaml",
        "--set",
        "check.samples=2",
        "--set",
        "check.latency_runs=0",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "recipes/build/quickstart/report.json").read_text())
    assert report["accuracy"]["samples"] == 2 and report["latency"] is None


def test_compile_accuracy_failure_exits_1(tmp_path):
    plugin = tmp_path / "scale.py"
    plugin.write_text(SCALE_PLUGIN)
    result = run_cli(
        "compile",
        str(QUICKSTART),
        "-o",
        str(tmp_path / "out"),
        "--set",
        f"plugins=[{plugin}]",
        "--set",
        "passes=[cleanup, scale-output]",
        "--set",
        "check.samples=2",
    )
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL logits: max_abs" in result.stdout and report["verdict"] == "fail"
    assert any(f.startswith("logits: max_abs") for f in report["accuracy"]["failures"])
    assert report["first_diverging_pass"] == "scale-output"


@pytest.mark.parametrize(
    ("recipe_text", "message"),
    [
        ("name: x\nmodel: [\n", r"recipe.yaml:\d+:\d+: invalid YAML"),
        (
            "name: x\nmodel: m.onnx\nchek: {}\n",
            r"recipe.yaml:3:1: unknown key 'chek'; did you mean 'check'",
        ),
        (
            "name: x\nmodel: m.onnx\npasses: [fold-constant]\n",
            r"recipe.yaml:3:10: unknown pass 'fold-constant'; did you mean 'fold-constants'",
        ),
        (
            "name: x\nmodel: m.onnx\ncheck: {samples: -1}\n",
            r"recipe.yaml:3:9: check.samples: Input should be greater than or equal to 1",
        ),
        (
            "name: x\nmodel: missing.onnx\n",
            r"yaml:2:1: .*missing.onnx: model file not found",
        ),
        ("name: x\nmodel: notonnx.onnx\n", r"notonnx.onnx: (not a valid ONNX model|invalid ONNX)"),
        (
            "name: x\nmodel: m.onnx\ncheck: {data: {npz: nothing/*.npz}}\n",
            r"\.npz data file found",
        ),
        (
            "name: x\nmodel: m.onnx\nplugins: [nope.py]\n",
            r"yaml:3:11: plugin file not found",
        ),
    ],
    ids=["yaml", "key", "pass", "type", "model-missing", "model-invalid", "data", "plugin"],
)
def test_user_errors_exit_2_with_place_and_no_traceback(tmp_path, recipe_text, message):
    shutil.copy(MODELS / "cnn_legacy.onnx", tmp_path / "m.onnx")
    (tmp_path / "notonnx.onnx").write_text("hello")
    (tmp_path / "recipe.yaml").write_text(recipe_text)
    result = run_cli("compile", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "build").exists()


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "recipe.yaml").write_text("name: x\nmodel: missing.onnx\n")
    result = run_cli("--debug", "compile", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_a_failing_pass_is_rolled_back_and_strict_exits_1(tmp_path):
    (tmp_path / "boom.py").write_text(BOOM_PLUGIN)
    shutil.copy(MODELS / "cnn_legacy.onnx", tmp_path / "m.onnx")
    (tmp_path / "recipe.yaml").write_text(
        "name: x\nmodel: m.onnx\nplugins: [boom.py]\npasses: [boom]\n"
    )
    result = run_cli("compile", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "WARN pass 'boom' rolled back: ValueError: kaput" in result.stdout
    result = run_cli("compile", "recipe.yaml", "--strict", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "FAIL pass 'boom' rolled back: ValueError: kaput (strict)" in result.stdout


def test_a_pass_that_exits_is_an_internal_failure_exit_3(tmp_path):
    (tmp_path / "quit.py").write_text(BOOM_PLUGIN.replace('raise ValueError("kaput")', "exit(0)"))
    shutil.copy(MODELS / "cnn_legacy.onnx", tmp_path / "m.onnx")
    (tmp_path / "recipe.yaml").write_text(
        "name: x\nmodel: m.onnx\nplugins: [quit.py]\npasses: [boom]\n"
    )
    result = run_cli("compile", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 3
    assert "recipe.yaml:4:10: pass 'boom' failed: called sys.exit(0)" in result.stderr


def test_optimize_default_chain_and_named_passes(tmp_path):
    out = tmp_path / "o.onnx"
    result = run_cli("optimize", str(MODELS / "bert_legacy.onnx"), str(out))
    assert result.returncode == 0, result.stderr
    assert "271 ->" in result.stdout
    assert len(onnx.load(str(out)).graph.node) < 271
    result = run_cli("optimize", str(MODELS / "bert_legacy.onnx"), str(out), "--passes", "cleanup")
    assert result.returncode == 0
    assert not list(tmp_path.glob(".*"))  # nothing staged is left behind


def test_optimize_errors(tmp_path):
    result = run_cli(
        "optimize",
        str(MODELS / "cnn_legacy.onnx"),
        str(tmp_path / "o.onnx"),
        "--passes",
        "cleanup,foldconstants",
    )
    assert result.returncode == 2
    assert "unknown pass 'foldconstants'; did you mean 'fold-constants'?" in result.stderr
    result = run_cli("optimize", str(tmp_path / "none.onnx"), str(tmp_path / "o.onnx"))
    assert result.returncode == 2 and "model file not found" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_validate_and_print(tmp_path):
    result = run_cli("validate", str(QUICKSTART))
    assert result.returncode == 0 and ": ok (" in result.stdout
    result = run_cli("validate", str(QUICKSTART), "--print", "--set", "check.samples=3")
    assert result.returncode == 0
    assert "samples: 3" in result.stdout and "fold-constants:" in result.stdout
    (tmp_path / "r.yaml").write_text("name: x\nmodel: m\nbuild: {backend: onnxruntim}\n")
    result = run_cli("validate", str(tmp_path / "r.yaml"))
    assert result.returncode == 2 and "r.yaml:3:9: build.backend: Input should be" in result.stderr


def test_passes_lists_every_pass_with_options():
    result = run_cli("passes")
    assert result.returncode == 0
    assert "fold-constants\n    Fold constant subgraphs" in result.stdout
    assert "- size_threshold (default: 16MiB): Do not fold a tensor larger" in result.stdout


def test_schema_is_json_for_editors():
    result = run_cli("schema")
    schema = json.loads(result.stdout)
    assert schema["title"] == "trtopt recipe" and "check" in schema["properties"]


def test_usage_error_exits_2():
    result = run_cli("compile")
    assert result.returncode == 2 and "usage:" in result.stderr
