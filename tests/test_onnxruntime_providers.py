"""ONNX Runtime's execution providers: recipe lists become ONNX Runtime's names and options, a
provider missing here (CUDA and TensorRT on this CPU machine, for real) is one line and exit 2
naming the recipe line, and with `fallback` the next provider runs and the report says so.
The runs on a GPU are in tests/gpu/test_onnxruntime_gpu.py."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

import trtopt
from helpers import MODELS, run_cli
from trtopt import feeds
from trtopt.backends import get_backend
from trtopt.backends import onnxruntime as ort_backend
from trtopt.backends.onnxruntime import (
    ProviderChoice,
    ProviderUnavailableError,
    choose_providers,
    execution_providers,
    open_session,
)
from trtopt.calibration import DataSet, DataSource
from trtopt.calibration.collect import collect, session_providers
from trtopt.errors import RecipeError
from trtopt.recipe import Recipe, load_recipe

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
HAS_CUDA = CUDA in ort.get_available_providers()
needs_no_cuda = pytest.mark.skipif(HAS_CUDA, reason="the CUDA provider is installed here")
CNN = MODELS / "cnn_legacy.onnx"


def _recipe(write_recipe, recipe_for, build=None, calibration=None, **changes):
    """A small recipe file for the CNN, its `build.onnxruntime` and `calibration` given."""
    recipe = recipe_for(CNN, **changes)
    recipe["build"] = {"backend": "onnxruntime", "onnxruntime": build or {}}
    if calibration is not None:
        recipe["calibration"] = calibration
    return write_recipe(recipe)


def _line_of(path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# --- option plumbing ---------------------------------------------------------------------------


def test_provider_lists_become_onnxruntime_names_and_options():
    recipe = Recipe.model_validate(
        {
            "name": "x",
            "model": "m.onnx",
            "build": {
                "onnxruntime": {
                    "providers": ["tensorrt", "cuda", "cpu"],
                    "tensorrt": {
                        "device_id": 1,
                        "engine_cache_path": "/cache/engines",
                        "timing_cache_path": "/cache/timing",
                        "builder_optimization_level": 4,
                        "max_workspace_size": "2GiB",
                    },
                    "cuda": {"device_id": 1, "cudnn_conv_algo_search": "heuristic"},
                }
            },
        }
    )
    options = recipe.build.options()
    assert execution_providers(options["providers"], options["tensorrt"], options["cuda"]) == [
        (
            TENSORRT,
            {
                "device_id": "1",
                "trt_fp16_enable": "False",
                "trt_int8_enable": "False",
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": "/cache/engines",
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": "/cache/timing",
                "trt_builder_optimization_level": "4",
                "trt_max_workspace_size": str(2 << 30),
            },
        ),
        (CUDA, {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}),
        (CPU, {}),
    ]


def test_tensorrt_provider_precision_flags_are_off_and_cannot_be_turned_on(
    write_recipe, recipe_for
):
    (name, options), *_ = execution_providers(["tensorrt"])
    assert name == TENSORRT
    assert options["trt_fp16_enable"] == options["trt_int8_enable"] == "False"
    for key in ("trt_fp16_enable", "fp16", "int8"):
        path = _recipe(write_recipe, recipe_for, {"tensorrt": {key: True}})
        with pytest.raises(RecipeError) as error:
            load_recipe(path)
        assert key in str(error.value) and f"{path}:" in str(error.value)


def test_defaults_are_the_cpu_and_no_fallback():
    recipe = Recipe.model_validate({"name": "x", "model": "m.onnx"})
    assert recipe.build.onnxruntime.providers == ["cpu"]
    assert recipe.build.onnxruntime.fallback is False
    assert recipe.calibration.providers == ["cpu"] and recipe.calibration.fallback is False
    backend = get_backend("onnxruntime", recipe.build.options())
    assert backend.choice.providers == [(CPU, {})] and backend.notes == []
    cuda = recipe.build.onnxruntime.cuda
    assert (cuda.device_id, cuda.cudnn_conv_algo_search, cuda.tf32) == (0, "exhaustive", False)


@pytest.mark.parametrize(
    ("providers", "message"),
    [([], "at least one provider"), (["cuda", "cuda"], "names a provider twice"), (["gpu"], "")],
)
def test_a_bad_provider_list_names_its_place(write_recipe, recipe_for, providers, message):
    path = _recipe(write_recipe, recipe_for, {"providers": providers})
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert str(error.value).startswith(f"{path}:") and message in str(error.value)


def test_recipe_paths_of_the_tensorrt_provider_are_relative_to_the_recipe(
    write_recipe, recipe_for, tmp_path
):
    path = _recipe(write_recipe, recipe_for, {"tensorrt": {"engine_cache_path": "engines"}})
    loaded = load_recipe(path)
    assert loaded.build.onnxruntime.tensorrt.engine_cache_path == str(tmp_path / "engines")


# --- a provider missing here -------------------------------------------------------------------


@needs_no_cuda
@pytest.mark.parametrize("section", ["build", "calibration"])
def test_a_missing_provider_is_one_line_and_exit_2_naming_the_recipe_line(
    write_recipe, recipe_for, tmp_path, section
):
    wanted = {"providers": ["cuda", "cpu"]}
    path = _recipe(
        write_recipe,
        recipe_for,
        build=wanted if section == "build" else None,
        calibration=wanted if section == "calibration" else None,
    )
    out = tmp_path / "out"
    done = run_cli("compile", str(path), "-o", str(out), "-q")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    line = _line_of(path, "providers:")
    assert lines[0].startswith(f"error: {path}:{line}:"), lines[0]
    for part in (
        "cuda (CUDAExecutionProvider)",
        f"not in the installed onnxruntime {ort.__version__}",
        "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu",
        "cannot both be installed",
        "fallback: true",
    ):
        assert part in lines[0]
    assert not out.exists()  # checked before any pass: nothing written


@needs_no_cuda
def test_a_missing_provider_fails_before_a_cached_compile_is_reused(write_recipe, recipe_for):
    """A compile cached on a machine with the provider is no pass on one without it."""
    path = _recipe(write_recipe, recipe_for)
    assert trtopt.compile(path).exit_code == 0
    with pytest.raises(RecipeError, match="CUDAExecutionProvider"):
        trtopt.compile(path, overrides=["build.onnxruntime.providers=[cuda]"])


@needs_no_cuda
def test_fallback_with_no_provider_left_is_still_an_error():
    with pytest.raises(ProviderUnavailableError, match=r"no provider of \['tensorrt', 'cuda'\]"):
        choose_providers(["tensorrt", "cuda"], fallback=True)


def test_a_provider_onnxruntime_drops_silently_is_caught_on_the_session():
    """ONNX Runtime drops a provider it lacks with only a warning and runs on the CPU; a session
    that did not register every provider chosen is an error unless fallback."""
    if HAS_CUDA:
        pytest.skip("needs an ONNX Runtime without the CUDA provider")
    choice = ProviderChoice(["cuda", "cpu"], [(CUDA, {}), (CPU, {})])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with pytest.warns(UserWarning), pytest.raises(ProviderUnavailableError) as error:
        open_session(CNN, options, choice)
    assert "CUDAExecutionProvider did not start" in str(error.value)
    assert error.value.option == "providers" and error.value.exit_code == 2
    with pytest.warns(UserWarning):
        assert open_session(CNN, options, choice, fallback=True).get_providers() == [CPU]


# --- fallback ----------------------------------------------------------------------------------


@needs_no_cuda
def test_fallback_runs_on_the_next_provider_and_the_report_says_so(write_recipe, recipe_for):
    path = _recipe(
        write_recipe,
        recipe_for,
        build={"providers": ["tensorrt", "cuda", "cpu"], "fallback": True},
        calibration={"providers": ["cuda", "cpu"], "fallback": True},
    )
    result = trtopt.compile(path)
    assert result.exit_code == 0, result.report["accuracy"]["failures"]
    report = json.loads((result.output_dir / "report.json").read_text())
    build = report["build"]
    assert build["providers"] == [CPU]
    assert build["providers_requested"] == ["tensorrt", "cuda", "cpu"]
    assert set(build["providers_missing"]) == {"tensorrt", "cuda"}
    assert "not in the installed onnxruntime" in build["providers_missing"]["cuda"]
    assert report["calibration"] == {
        "requested": ["cuda", "cpu"],
        "providers": [CPU],
        "missing": {"cuda": report["calibration"]["missing"]["cuda"]},
        "reference": [CPU],
    }
    warnings = report["warnings"]
    for key, name in (
        ("build.onnxruntime.providers", "tensorrt"),
        ("build.onnxruntime.providers", "cuda"),
        ("calibration.providers", "cuda"),
    ):
        assert any(w.startswith(f"{key}: {name} skipped") for w in warnings), warnings
    assert all("ran on CPUExecutionProvider" in w for w in warnings if "skipped" in w)


def test_a_cpu_compile_reports_the_cpu(write_recipe, recipe_for):
    result = trtopt.compile(_recipe(write_recipe, recipe_for))
    build = result.report["build"]
    assert build["providers"] == [CPU] and build["providers_requested"] == ["cpu"]
    assert build["providers_missing"] == {} and build["provider_options"] == {}
    assert result.report["calibration"]["reference"] == [CPU]


# --- calibration sessions ----------------------------------------------------------------------


def _tiny_model() -> onnx.ModelProto:
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "relu",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_calibration_sessions_take_the_providers_of_the_enclosing_block(monkeypatch):
    made: list[list] = []
    real = ort.InferenceSession

    def spy(model, options=None, providers=None, **kwargs):
        made.append(list(providers or []))
        return real(model, options, providers=[CPU])

    monkeypatch.setattr(ort, "InferenceSession", spy)
    data = DataSet(
        DataSource.model_validate({"synthetic": {"seed": 1}, "limit": 2}),
        [feeds.InputInfo("x", np.dtype(np.float32), (2, 3))],
    )
    seen: dict[str, float] = {}

    def observe(name, array):
        seen[name] = float(np.max(array))

    collect(_tiny_model(), data, ["y"], observe)
    chosen = [(CUDA, {"device_id": "0"}), (CPU, {})]
    with session_providers(chosen):
        collect(_tiny_model(), data, ["y"], observe)
    collect(_tiny_model(), data, ["y"], observe)
    assert made == [[(CPU, {})], chosen, [(CPU, {})]]
    assert "y" in seen


def test_a_compile_hands_calibration_the_recipes_providers(write_recipe, recipe_for, monkeypatch):
    """The recipe's `calibration.providers` reach the calibration sessions and the reference
    (CUDA is taken as present here; ONNX Runtime then drops it, which fallback allows)."""
    monkeypatch.setattr(ort_backend, "why_missing", lambda name, device_id="0": None)
    made: list[tuple[type, list]] = []
    real = ort.InferenceSession

    def spy(model, *args, **kwargs):  # providers by keyword or third positional argument
        providers = kwargs.pop("providers", None) or (args[1] if len(args) > 1 else [])
        made.append((type(model), [p if isinstance(p, str) else p[0] for p in providers]))
        return real(model, *args[:1], providers=[CPU], **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    path = _recipe(
        write_recipe,
        recipe_for,
        calibration={"providers": ["cuda", "cpu"], "fallback": True},
        passes=["cleanup", {"quantize": {"calibrator": "minmax"}}],
    )
    result = trtopt.compile(path, use_cache=False)
    assert result.exit_code in (0, 1)  # the verdict on INT8 numbers is not the point here
    from_bytes = [names for kind, names in made if kind is bytes]  # calibration, folding
    from_files = [names for kind, names in made if kind is str]  # reference, stages, artifact
    assert [CUDA, CPU] in from_bytes
    assert [CUDA, CPU] in from_files  # the reference
    assert [CPU] in from_files  # the artifact: build.onnxruntime.providers is [cpu]
    assert yaml.safe_load(path.read_text())["calibration"]["providers"] == ["cuda", "cpu"]
