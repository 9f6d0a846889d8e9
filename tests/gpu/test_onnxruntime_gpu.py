"""ONNX Runtime's CUDA and TensorRT execution providers on a GPU: the quickstart artifact on the
CUDA provider against the reference on the CPU (the compile's own check, and output by output),
calibration and the reference run on the GPU, the TensorRT provider with its engine cache, and
a provider that does not start stopping the compile. Skipped where the provider does not start
here (no GPU, ONNX Runtime's CPU package, CUDA or TensorRT libraries missing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import trtopt
from trtopt import feeds
from trtopt.backends.onnxruntime import session_loader, why_missing
from trtopt.errors import RecipeError
from trtopt.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
CUDA_MISSING = why_missing(CUDA)
TENSORRT_MISSING = why_missing(TENSORRT)
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA_MISSING is not None, reason=f"{CUDA} {CUDA_MISSING}"),
]
FAST = ["check.samples=4", "check.latency_runs=5"]


def _compile(recipe: Path, out: Path, *overrides: str, use_cache: bool = True) -> dict:
    result = trtopt.compile(
        recipe, output_dir=out, overrides=[*FAST, *overrides], use_cache=use_cache
    )
    assert result.exit_code == 0, result.report["accuracy"]["failures"]
    return result.report


def test_quickstart_on_the_cuda_provider_matches_the_cpu(tmp_path):
    cpu = _compile(QUICKSTART, tmp_path / "cpu")
    gpu = _compile(QUICKSTART, tmp_path / "gpu", "build.onnxruntime.providers=[cuda]")
    assert gpu["build"]["providers"][0] == CUDA and gpu["build"]["providers_missing"] == {}
    assert gpu["calibration"]["reference"] == [CPU]  # the compile's check: GPU against CPU
    assert gpu["build"]["sha256"] == cpu["build"]["sha256"]  # the same graph, run elsewhere
    for output in gpu["accuracy"]["outputs"].values():
        assert output["metrics"]["max_abs"] <= 1e-4, output

    # Output by output: the artifact on the CUDA provider against the same file on the CPU.
    artifact = tmp_path / "gpu" / "model.onnx"
    recipe = load_recipe(QUICKSTART)
    inputs = feeds.model_inputs(onnx.load(str(artifact)))
    data = feeds.synthetic_feeds(inputs, 4, 0, recipe.check.dims, recipe.input_ranges())
    on_cpu = session_loader(artifact)()
    on_gpu = session_loader(artifact, providers=["cuda"])()
    assert on_gpu.get_providers()[0] == CUDA
    for feed in data:
        for a, b in zip(on_cpu.run(None, feed), on_gpu.run(None, feed)):
            np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)


def test_calibration_and_the_reference_run_on_the_cuda_provider(tmp_path):
    recipe = ROOT / "recipes" / "cnn-int8.yaml"
    cpu = _compile(recipe, tmp_path / "cpu")
    # No cache: the quantize stage the CPU compile cached would stand in for calibration.
    gpu = _compile(recipe, tmp_path / "gpu", "calibration.providers=[cuda]", use_cache=False)
    assert gpu["calibration"]["providers"] == [CUDA]
    assert gpu["calibration"]["reference"][0] == CUDA
    # Ranges from the GPU differ from the CPU's by rounding: the same verdict, near metrics.
    for name, output in gpu["accuracy"]["outputs"].items():
        cosine = cpu["accuracy"]["outputs"][name]["metrics"]["cosine"]
        assert abs(output["metrics"]["cosine"] - cosine) < 1e-3


@pytest.mark.skipif(TENSORRT_MISSING is not None, reason=f"{TENSORRT} {TENSORRT_MISSING}")
def test_tensorrt_provider_keeps_fp32_and_caches_its_engines(tmp_path):
    cache = tmp_path / "engines"
    report = _compile(
        QUICKSTART,
        tmp_path / "o",
        "build.onnxruntime.providers=[tensorrt, cuda, cpu]",
        f"build.onnxruntime.tensorrt.engine_cache_path={cache}",
        f"build.onnxruntime.tensorrt.timing_cache_path={cache}",
        "check.golden=null",
        # TensorRT may use TF32 for FP32 layers; its precision flags stay off.
        "check.thresholds={max_abs: 1.0e-2, min_cosine: 0.9999}",
    )
    assert report["build"]["providers"][0] == TENSORRT
    options = report["build"]["provider_options"][TENSORRT]
    assert options["trt_fp16_enable"] == options["trt_int8_enable"] == "False"
    assert any(cache.iterdir())  # engines written for later sessions


def test_a_provider_that_does_not_start_stops_the_compile(tmp_path):
    with pytest.raises(RecipeError, match=r"cuda \(CUDAExecutionProvider\).*device 99"):
        trtopt.compile(
            QUICKSTART,
            output_dir=tmp_path / "o",
            overrides=["build.onnxruntime.providers=[cuda]", "build.onnxruntime.cuda.device_id=99"],
        )
    assert not (tmp_path / "o").exists()
