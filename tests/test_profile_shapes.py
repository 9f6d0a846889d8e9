"""An engine is checked at every shape its optimization profiles accept (each profile's min,
opt and max), and one built without a profile says, everywhere a user looks, that it takes
only the check's shape."""

from __future__ import annotations

import html
import json

import pytest

import trtopt
from helpers import MODELS

pytest.importorskip("tensorrt_rtx")

FAST = ["check.samples=1", "check.latency_runs=0", "check.verify_passes=false"]
PROFILE = {"min": [1, 3, 32, 32], "opt": [2, 3, 32, 32], "max": [8, 3, 32, 32]}

BIG_BATCH_BUG = '''
import numpy as np
import onnx_graphsurgeon as gs
from trtopt import Pass, register_pass


@register_pass("big-batch-bug")
class BigBatchBug(Pass):
    """Add 1000 * max(0, batch - 4) to the output: right at the check's batch of 2, wrong at 8."""

    def run(self, graph, ctx):
        x, out = graph.inputs[0], graph.outputs[0]
        name = out.name
        out.name = name + "_before_bug"
        shape = gs.Variable("bug_shape", dtype=np.int64)
        batch = gs.Variable("bug_batch", dtype=np.int64)
        scalar = gs.Variable("bug_scalar", dtype=np.float32)
        over = gs.Variable("bug_over", dtype=np.float32)
        relu = gs.Variable("bug_relu", dtype=np.float32)
        bump = gs.Variable("bug_bump", dtype=np.float32)
        result = gs.Variable(name, dtype=out.dtype, shape=out.shape)
        zero = gs.Constant("bug_zero", np.array(0, np.int64))
        four = gs.Constant("bug_four", np.array(4, np.float32))
        scale = gs.Constant("bug_scale", np.array(1000, np.float32))
        graph.nodes += [
            gs.Node("Shape", inputs=[x], outputs=[shape]),
            gs.Node("Gather", inputs=[shape, zero], outputs=[batch]),
            gs.Node("Cast", attrs={"to": 1}, inputs=[batch], outputs=[scalar]),
            gs.Node("Sub", inputs=[scalar, four], outputs=[over]),
            gs.Node("Relu", inputs=[over], outputs=[relu]),
            gs.Node("Mul", inputs=[relu, scale], outputs=[bump]),
            gs.Node("Add", inputs=[out, bump], outputs=[result]),
        ]
        graph.outputs = [result]
        return graph
'''


def rtx_recipe(recipe_for, profile: dict | None, **overrides: object) -> dict:
    recipe = recipe_for(
        MODELS / "cnn_legacy.onnx",
        build={"backend": "tensorrt-rtx", "tensorrt_rtx": {"compute_capabilities": [8.9]}},
        **overrides,
    )
    if profile is not None:
        recipe["inputs"]["pixel_values"]["profile"] = profile
    return recipe


def test_accuracy_is_checked_at_each_profile_min_opt_max(write_recipe, recipe_for, tmp_path):
    result = trtopt.compile(
        write_recipe(rtx_recipe(recipe_for, PROFILE)), tmp_path / "o", overrides=FAST
    )
    assert result.exit_code == 0, result.summary()
    checks = result.report["accuracy"]["profiles"]
    assert [c["profile"] for c in checks] == ["profile 0 min", "profile 0 opt", "profile 0 max"]
    assert [c["shapes"]["pixel_values"] for c in checks] == list(PROFILE.values())
    assert all(c["verdict"] == "pass" and c["outputs"]["logits"]["metrics"] for c in checks)
    saved = json.loads((tmp_path / "o" / "report.json").read_text())
    assert saved["accuracy"]["profiles"] == checks
    assert (
        "### At profile 0 max (pixel_values [8, 3, 32, 32]): pass"
        in (tmp_path / "o" / "report.md").read_text()
    )
    assert "At profile 0 max" in (tmp_path / "o" / "report.html").read_text()
    assert "accuracy at 3 profile shapes: pass" in result.summary()
    assert not any("fixed at" in w for w in result.report["warnings"])


def test_a_graph_wrong_only_at_the_profile_max_fails_the_gate(write_recipe, recipe_for, tmp_path):
    (tmp_path / "bug.py").write_text(BIG_BATCH_BUG)
    recipe = rtx_recipe(recipe_for, PROFILE, plugins=["bug.py"], passes=["big-batch-bug"])
    result = trtopt.compile(write_recipe(recipe), tmp_path / "o", overrides=FAST)
    assert result.exit_code == 1
    accuracy = result.report["accuracy"]
    assert accuracy["outputs"]["logits"]["verdict"] == "pass"  # the check's batch of 2
    verdicts = {c["profile"]: c["verdict"] for c in accuracy["profiles"]}
    assert verdicts == {"profile 0 min": "pass", "profile 0 opt": "pass", "profile 0 max": "fail"}
    assert accuracy["verdict"] == "fail"
    assert any(
        f.startswith("profile 0 max {'pixel_values': [8, 3, 32, 32]}: logits")
        for f in accuracy["failures"]
    )
    assert "fail at profile 0 max" in result.summary()


def test_an_engine_without_a_profile_says_it_is_fixed_at_the_check_shape(
    write_recipe, recipe_for, tmp_path
):
    result = trtopt.compile(
        write_recipe(rtx_recipe(recipe_for, None)), tmp_path / "o", overrides=FAST
    )
    assert result.exit_code == 0
    note = (
        "input 'pixel_values' is dynamic and has no profile: the engine is fixed at [2, 3, 32, 32]"
    )
    assert any(w.startswith(note) for w in result.report["warnings"])
    assert result.report["accuracy"]["profiles"] == []  # the check's shape is the only one
    assert f"WARN {note}" in result.summary()
    assert note in (tmp_path / "o" / "report.md").read_text()
    assert html.escape(note) in (tmp_path / "o" / "report.html").read_text()
