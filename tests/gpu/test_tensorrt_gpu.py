"""Engines run on a GPU against ONNX Runtime: the accuracy check on the engine itself,
timing-cache reuse, two optimization profiles. Skipped where there is no GPU (or no TensorRT of
the flavour a test needs)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import trtopt
from trtopt.backends.tensorrt import find_gpu

ROOT = Path(__file__).resolve().parents[2]
GPU = find_gpu()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(GPU is None, reason="no CUDA GPU or driver"),
]
needs_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None, reason="datacenter TensorRT is not installed"
)
needs_rtx = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt_rtx") is None
    or GPU is None
    or (
        GPU.compute_capability not in ((8, 0), (8, 6), (8, 9)) and GPU.compute_capability < (12, 0)
    ),
    reason="TensorRT for RTX or an RTX-class GPU (8.0, 8.6, 8.9, 12.x) is missing",
)
FAST = ["check.samples=4", "check.latency_runs=5"]


def _compile(recipe: str, out: Path, *overrides: str) -> dict:
    result = trtopt.compile(
        ROOT / "recipes" / recipe, output_dir=out, overrides=[*FAST, *overrides]
    )
    assert result.exit_code == 0, result.report["accuracy"]["failures"]
    return result.report


@needs_tensorrt
def test_datacenter_engine_runs_against_onnxruntime_with_two_profiles(tmp_path):
    two = (
        "inputs.pixel_values.profiles=[{min: [1,3,32,32], opt: [1,3,32,32], max: [2,3,32,32]},"
        " {min: [2,3,32,32], opt: [8,3,32,32], max: [32,3,32,32]}]"
    )
    report = _compile(
        "quickstart-tensorrt.yaml",
        tmp_path / "o",
        "inputs.pixel_values.profile=null",
        two,
        f"build.tensorrt.timing_cache={tmp_path / 'timing.cache'}",
    )
    assert report["accuracy"]["checked"] == "artifact"
    assert report["accuracy"]["artifact_not_run"] is None
    assert report["build"]["tensorrt"]["gpu"] == GPU.name
    assert len(report["build"]["tensorrt"]["profiles"]) == 2


@needs_tensorrt
def test_timing_cache_is_reused_across_compiles(tmp_path):
    cache = tmp_path / "timing.cache"
    _compile("quickstart-tensorrt.yaml", tmp_path / "a", f"build.tensorrt.timing_cache={cache}")
    first = cache.stat().st_size
    assert first > 0
    report = _compile(
        "quickstart-tensorrt.yaml", tmp_path / "b", f"build.tensorrt.timing_cache={cache}"
    )
    assert cache.stat().st_size >= first
    assert report["build"]["tensorrt"]["timing_cache"] == str(cache)
    assert (tmp_path / "b" / "timing.cache").is_file()


@needs_rtx
def test_rtx_engine_runs_against_onnxruntime_and_keeps_a_runtime_cache(tmp_path):
    cc = "{}.{}".format(*GPU.compute_capability)
    cache = tmp_path / "runtime.cache"
    report = _compile(
        "quickstart-rtx.yaml",
        tmp_path / "o",
        f"build.tensorrt_rtx.compute_capabilities=['{cc}']",
        f"build.tensorrt_rtx.runtime_cache={cache}",
    )
    assert report["accuracy"]["checked"] == "artifact"
    assert cache.is_file() and cache.stat().st_size > 0
    json.dumps(report)  # serializable as written
