"""What a cache key holds: a pass's key only what reaches the graph it reads (the declared
shapes, not the optimization profiles), and a cached compile draws report.html again on a hit
(matplotlib installed since, the hit's own report)."""

from __future__ import annotations

import contextlib
import json

import pytest

import trtopt
from helpers import MODELS, QUICKSTART
from trtopt import html
from trtopt.errors import BackendUnavailableError

FAST = ["check.samples=1", "check.latency_runs=0", "check.verify_passes=false"]
PROFILE = {"min": [1, 3, 32, 32], "opt": [2, 3, 32, 32], "max": [4, 3, 32, 32]}


def test_a_cache_hit_draws_the_plots_matplotlib_can_draw_now(
    write_recipe, recipe_for, tmp_path, monkeypatch
):
    recipe = write_recipe(recipe_for(MODELS / "cnn_legacy.onnx"))
    with monkeypatch.context() as without:
        without.setattr(html, "has_matplotlib", lambda: False)
        cold = trtopt.compile(recipe, tmp_path / "o", overrides=FAST)
    assert html.MISSING_PLOTS in (tmp_path / "o" / "report.html").read_text()
    # `pip install 'trtopt[report]'`, then compile again
    warm = trtopt.compile(recipe, tmp_path / "o", overrides=FAST)
    assert warm.report["cache"]["compile"] == "hit"
    page = (tmp_path / "o" / "report.html").read_text()
    assert html.MISSING_PLOTS not in page and "<img" in page
    assert "report-plots.npz" not in {p.name for p in (tmp_path / "o").iterdir()}
    assert cold.report["build"]["sha256"] == warm.report["build"]["sha256"]


def test_adding_a_profile_keeps_every_cached_pass(write_recipe, recipe_for, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    recipe = recipe_for(
        MODELS / "cnn_legacy.onnx",
        build={"backend": "tensorrt-rtx", "tensorrt_rtx": {"compute_capabilities": [8.9]}},
    )
    first = trtopt.compile(write_recipe(recipe), tmp_path / "o", overrides=FAST)
    assert first.report["cache"]["passes_from_cache"] == 0
    recipe["inputs"]["pixel_values"]["profile"] = PROFILE
    second = trtopt.compile(write_recipe(recipe), tmp_path / "o", overrides=FAST)
    passes = len(recipe["passes"])
    assert second.report["cache"]["passes_from_cache"] == passes
    # The engine and its checks change with the profile: the compile itself is not a hit.
    assert second.report["cache"]["compile"] == "miss"
    assert second.report["build"]["tensorrt"]["profiles"] == [{"pixel_values": PROFILE}]
    assert len(second.report["accuracy"]["profiles"]) == 3


def test_a_declared_shape_is_in_the_pass_keys(write_recipe, recipe_for, tmp_path):
    recipe = recipe_for(MODELS / "cnn_legacy.onnx")
    trtopt.compile(write_recipe(recipe), tmp_path / "o", overrides=FAST)
    recipe["inputs"]["pixel_values"]["shape"] = [2, 3, 32, 32]  # written into the graph
    again = trtopt.compile(write_recipe(recipe), tmp_path / "o", overrides=FAST)
    assert again.report["cache"]["passes_from_cache"] == 0


def test_where_calibration_runs_joins_the_data_and_compile_keys(tmp_path):
    from pathlib import Path

    from trtopt.cache import StageCache
    from trtopt.compile_cache import cache_keys, compile_settings
    from trtopt.digests import digest
    from trtopt.inputs import apply_input_overrides, check_feeds, pass_data
    from trtopt.model import load_model, model_files
    from trtopt.recipe import load_recipe

    def keys(recipe):
        source = load_model(recipe.model, external_data=False)
        apply_input_overrides(source, recipe)
        data, _ = check_feeds(recipe, source)
        calibration, validation = pass_data(recipe, source, data)
        store = StageCache(tmp_path / "cache")
        files = model_files(Path(recipe.model))
        chain = cache_keys(store, recipe, files, source, data, calibration, validation)
        return chain.data(), digest(compile_settings(recipe, data))

    plain = keys(load_recipe(QUICKSTART))
    gpu = keys(load_recipe(QUICKSTART, ["calibration={providers: [cuda, cpu], fallback: true}"]))
    assert plain[0] != gpu[0] and plain[1] != gpu[1]


def test_quantize_gets_fp16_around_for_tensorrt_and_its_key_follows_the_effective_option(
    write_recipe, recipe_for, tmp_path
):
    """A quantize step that does not set ``high_precision`` gets fp16 when the build is
    TensorRT's and keeps fp32 on ONNX Runtime, where its Q/DQ are placed for ONNX Runtime's
    kernels: the report's recipe shows the values it ran with, and its stage key changes with
    the backend only where they do."""

    def compile_with(backend: str, options: dict) -> dict:
        recipe = recipe_for(MODELS / "cnn_legacy.onnx", build={"backend": backend})
        recipe["passes"] = [{"quantize": options}]
        # No datacenter TensorRT here: the passes run and the report is written all the same.
        with contextlib.suppress(BackendUnavailableError):
            trtopt.compile(write_recipe(recipe), tmp_path / "o", overrides=FAST)
        report = json.loads((tmp_path / "o" / "report.json").read_text())
        ((quantize,),) = [[p["options"]["high_precision"]] for p in report["passes"]]
        return {
            "from_cache": report["cache"]["passes_from_cache"],
            "recipe": report["recipe"]["passes"][0]["options"],
            "ran_with": quantize,
        }

    on_cpu = {"placement": "onnxruntime"}  # ONNX Runtime's integer kernels, and FP32 around
    on_onnxruntime = compile_with("onnxruntime", {})
    assert on_onnxruntime == {"from_cache": 0, "recipe": on_cpu, "ran_with": "fp32"}
    tensorrt = compile_with("tensorrt", {})
    fp16 = {"high_precision": "fp16"}
    assert tensorrt == {"from_cache": 0, "recipe": fp16, "ran_with": "fp16"}
    # An explicit value wins, fp32 included; the same effective options, the same key.
    fp32 = {"high_precision": "fp32"}
    assert compile_with("tensorrt", fp32) == {"from_cache": 0, "recipe": fp32, "ran_with": "fp32"}
    as_tensorrt = {"placement": "tensorrt", **fp16}
    explicit = compile_with("onnxruntime", as_tensorrt)
    assert explicit == {"from_cache": 1, "recipe": as_tensorrt, "ran_with": "fp16"}
