"""Real TensorRT for RTX engine builds on a CPU, through `trtopt.compile` (the users' path): the
engine and its report for the compute capabilities a recipe names, the build options reaching
the builder, several profiles, and a graph TensorRT rejects failing with its node named. (Every
shipped recipe's final graph is built in test_check_recipes.py.)"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import trtopt
from helpers import ROOT
from trtopt.errors import EXIT_INTERNAL, EXIT_USER, BuildError, UserError
from trtopt.session import EMULATED_CHECKED

trt = pytest.importorskip("tensorrt_rtx")

CC_BITS = {"7.5": 0x01, "8.0": 0x02, "8.6": 0x04, "8.9": 0x08, "12.0": 0x10, "12.1": 0x20}
"""Byte 0x20 of a TensorRT for RTX 1.x plan is a bitmask of its target compute capabilities
(observed, not an API: checked only on 1.x)."""
FAST = ["check.samples=1", "check.latency_runs=0", "check.verify_passes=false"]


def test_rtx_recipe_compiles_on_a_cpu_and_reports_the_engine(tmp_path):
    result = trtopt.compile(
        ROOT / "recipes" / "quickstart-rtx.yaml", output_dir=tmp_path / "o", overrides=FAST
    )
    assert result.exit_code == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    engine = report["build"]["tensorrt"]
    assert report["build"]["artifact"] == "model.engine" and report["build"]["seconds"] > 0
    assert engine["flavour"] == "tensorrt-rtx" and engine["version"] == trt.__version__
    assert engine["compute_capabilities"] == ["8.9", "12.0"]
    plan = (tmp_path / "o" / "model.engine").read_bytes()
    assert engine["engine_bytes"] == len(plan) > 10_000
    assert "build.log" in report["build"]["files"]
    if trt.__version__.startswith("1."):
        assert plan[0x20] == CC_BITS["8.9"] | CC_BITS["12.0"]
    assert engine["profiles"] == [
        {"pixel_values": {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [16, 3, 32, 32]}}
    ]
    if "no CUDA GPU" in (report["accuracy"]["artifact_not_run"] or ""):
        assert report["accuracy"]["checked"] == EMULATED_CHECKED


def test_build_options_reach_the_builder(write_recipe, recipe_for, tmp_path):
    """The builder's own configuration (Polygraphy logs it into build.log) shows the options."""
    recipe = recipe_for(
        ROOT / "tests" / "models" / "cnn_legacy.onnx",
        build={
            "backend": "tensorrt-rtx",
            "tensorrt_rtx": {
                "compute_capabilities": [8.9],
                "workspace": "512MiB",
                "memory_pools": {"tactic_shared_memory": "64KiB"},
                "optimization_level": 1,
                "max_aux_streams": 0,
                "profiling_verbosity": "layer_names_only",
                "sparsity": True,
            },
        },
    )
    recipe["inputs"]["pixel_values"]["profiles"] = [
        {"min": [1, 3, 32, 32], "opt": [1, 3, 32, 32], "max": [2, 3, 32, 32]},
        {"min": [2, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [16, 3, 32, 32]},
    ]
    result = trtopt.compile(write_recipe(recipe), output_dir=tmp_path / "o", overrides=FAST)
    log = (tmp_path / "o" / "build.log").read_text()
    assert "WORKSPACE: 512.00 MiB" in log and "TACTIC_SHARED_MEMORY: 0.06 MiB" in log
    assert "SPARSE_WEIGHTS" in log and "STRONGLY_TYPED" in log
    assert "ProfilingVerbosity.LAYER_NAMES_ONLY" in log
    assert "Profile 1:" in log and "Setting 1 target compute capabilities: [(8, 9)]" in log
    assert len(result.report["build"]["tensorrt"]["profiles"]) == 2
    assert result.report["build"]["tensorrt"]["loaders"]["CreateConfigRTX"] == {
        "builder_optimization_level": "1",
        "max_aux_streams": "0",
        "memory_pool_limits": "{<MemoryPoolType.WORKSPACE: 0>: 536870912, "
        f"<MemoryPoolType.TACTIC_SHARED_MEMORY: {int(trt.MemoryPoolType.TACTIC_SHARED_MEMORY)}>: "
        "65536}",
        "profiling_verbosity": "<ProfilingVerbosity.LAYER_NAMES_ONLY: 0>",
        "sparse_weights": "True",
        "compute_capabilities": "[(8, 9)]",
    }


def int32_bias_model() -> onnx.ModelProto:
    """Valid ONNX that ONNX Runtime runs but TensorRT rejects: a DequantizeLinear of an INT32
    tensor (how some quantizers write a bias)."""
    bias = numpy_helper.from_array(np.arange(4, dtype=np.int32), "bias_q")
    scale = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "bias_scale")
    nodes = [
        helper.make_node("DequantizeLinear", ["bias_q", "bias_scale"], ["bias"], "dq_bias"),
        helper.make_node("Add", ["x", "bias"], ["y"], "add_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [bias, scale],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_a_graph_tensorrt_rejects_fails_the_build_naming_the_node(write_recipe, tmp_path):
    model = tmp_path / "bias.onnx"
    onnx.save(int32_bias_model(), model)
    recipe = {"name": "bias", "model": str(model), "build": {"backend": "tensorrt-rtx"}}
    with pytest.raises(BuildError) as caught:
        trtopt.compile(write_recipe(recipe), output_dir=tmp_path / "o", overrides=FAST)
    error = caught.value
    assert error.exit_code == EXIT_INTERNAL
    assert error.place == "node 'dq_bias'"
    assert "rejects node 'dq_bias' (DequantizeLinear)" in error.message
    assert "INT32 bias" in error.message and "Fix:" in error.message
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_a_strict_lint_pass_stops_the_compile_before_the_build(write_recipe, tmp_path):
    model = tmp_path / "bias.onnx"
    onnx.save(int32_bias_model(), model)
    recipe = {
        "name": "bias",
        "model": str(model),
        "passes": [{"lint": {"target": "tensorrt-rtx"}}],
        "build": {"backend": "tensorrt-rtx"},
    }
    with pytest.raises(UserError) as caught:
        trtopt.compile(write_recipe(recipe), output_dir=tmp_path / "o", overrides=FAST)
    assert caught.value.exit_code == EXIT_USER
    assert "node 'dq_bias' (DequantizeLinear)" in caught.value.message


def test_an_unknown_target_gpu_is_a_recipe_error(write_recipe, recipe_for, tmp_path):
    recipe = recipe_for(
        ROOT / "tests" / "models" / "cnn_legacy.onnx",
        build={"backend": "tensorrt-rtx", "tensorrt_rtx": {"compute_capabilities": [9.0]}},
    )
    with pytest.raises(UserError) as caught:
        trtopt.compile(write_recipe(recipe), output_dir=tmp_path / "o", overrides=FAST)
    assert "ComputeCapability.SM90" in caught.value.message
    assert trt.__version__ in caught.value.message
    assert "recipe.yaml:" in str(caught.value.place)
