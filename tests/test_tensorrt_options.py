"""The TensorRT backends without TensorRT: recipe options -> Polygraphy loader arguments,
optimization profiles from `inputs`, and the error for a missing backend package."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from enum import Enum
from types import SimpleNamespace

import pytest

import trtopt
from helpers import QUICKSTART, ROOT
from trtopt.backends import tensorrt as backend
from trtopt.backends.profiles import Profiles, derive_profiles
from trtopt.errors import EXIT_USER, BackendUnavailableError, DataError, RecipeError
from trtopt.feeds import InputInfo
from trtopt.recipe import BuildSpec, InputSpec
from trtopt.session import EMULATED_CHECKED


class BuilderFlag(Enum):
    TF32 = 1
    SPARSE_WEIGHTS = 2
    REFIT = 3
    STRIP_PLAN = 4
    VERSION_COMPATIBLE = 5
    EXCLUDE_LEAN_RUNTIME = 6


class MemoryPoolType(Enum):
    WORKSPACE = 0
    TACTIC_SHARED_MEMORY = 1


class ProfilingVerbosity(Enum):
    NONE = 0
    LAYER_NAMES_ONLY = 1
    DETAILED = 2


class HardwareCompatibilityLevel(Enum):
    NONE = 0
    AMPERE_PLUS = 1
    SAME_COMPUTE_CAPABILITY = 2


class ComputeCapability(Enum):
    SM89 = 5
    SM120 = 6


class IBuilderConfig:
    builder_optimization_level = max_aux_streams = None

    def create_timing_cache(self) -> None: ...


def fake_trt(**drop: str) -> SimpleNamespace:
    """A stand-in for the tensorrt module with the members the mapping looks up; ``drop``
    removes one (owner=member) to play an older version."""
    members = {
        "BuilderFlag": BuilderFlag,
        "MemoryPoolType": MemoryPoolType,
        "ProfilingVerbosity": ProfilingVerbosity,
        "HardwareCompatibilityLevel": HardwareCompatibilityLevel,
        "ComputeCapability": ComputeCapability,
        "IBuilderConfig": IBuilderConfig,
        "NetworkDefinitionCreationFlag": SimpleNamespace(STRONGLY_TYPED=1),
    }
    for owner, member in drop.items():
        members[owner] = SimpleNamespace(
            **{k: v for k, v in vars(members[owner]).items() if k != member}
        )
    return SimpleNamespace(__version__="10.99.0", **members)


DATACENTER = backend.FLAVOURS["tensorrt"]
RTX = backend.FLAVOURS["tensorrt-rtx"]
PROFILES = Profiles([{"x": ((1, 3), (4, 3), (8, 3))}, {"x": ((8, 3), (16, 3), (32, 3))}])


def test_every_datacenter_option_reaches_its_loader_argument(tmp_path):
    cache = tmp_path / "timing.cache"
    options = BuildSpec.model_validate(
        {
            "backend": "tensorrt",
            "tensorrt": {
                "optimization_level": 5,
                "workspace": "2GiB",
                "memory_pools": {"tactic_shared_memory": "48KiB"},
                "max_aux_streams": 2,
                "profiling_verbosity": "layer_names_only",
                "sparsity": True,
                "refittable": True,
                "strip_plan": True,
                "tf32": True,
                "timing_cache": str(cache),
                "version_compatible": True,
                "exclude_lean_runtime": True,
                "hardware_compatibility_level": "ampere_plus",
            },
        }
    ).options()
    args = backend.loader_arguments(DATACENTER, options, PROFILES, fake_trt())
    assert args.network == {"strongly_typed": True}
    config = dict(args.config)
    profiles = config.pop("profiles")
    assert [p["x"].min for p in profiles] == [[1, 3], [8, 3]]
    assert [p["x"].max for p in profiles] == [[8, 3], [32, 3]]
    assert config == {
        "builder_optimization_level": 5,
        "max_aux_streams": 2,
        "memory_pool_limits": {
            MemoryPoolType.WORKSPACE: 2 << 30,
            MemoryPoolType.TACTIC_SHARED_MEMORY: 48 << 10,
        },
        "profiling_verbosity": ProfilingVerbosity.LAYER_NAMES_ONLY,
        "sparse_weights": True,
        "refittable": True,
        "strip_plan": True,
        "version_compatible": True,
        "exclude_lean_runtime": True,
        "tf32": True,
        "hardware_compatibility_level": HardwareCompatibilityLevel.AMPERE_PLUS,
        "load_timing_cache": str(cache),
    }
    assert args.engine == {"save_timing_cache": str(cache)}


def test_datacenter_arguments_construct_polygraphy_create_config():
    """The arguments are ones Polygraphy's CreateConfig takes, stored as given."""
    from polygraphy.backend.trt import CreateConfig

    options = {"optimization_level": 2, "max_aux_streams": 1, "tf32": True, "sparsity": True}
    args = backend.loader_arguments(DATACENTER, options, PROFILES, fake_trt())
    config = CreateConfig(**args.config)
    assert config.builder_optimization_level == 2
    assert config.max_aux_streams == 1
    assert config.tf32 is True and config.sparse_weights is True
    assert not (config.fp16 or config.int8 or config.bf16 or config.fp8)  # strongly typed
    assert len(config.profiles) == 2


def test_rtx_options_map_compute_capabilities_and_skip_the_timing_cache(tmp_path):
    options = BuildSpec.model_validate(
        {"backend": "tensorrt-rtx", "tensorrt_rtx": {"compute_capabilities": ["8.9", 12.0]}}
    ).options()
    args = backend.loader_arguments(RTX, options, Profiles(), fake_trt(), tmp_path / "t.cache")
    assert args.config["compute_capabilities"] == [(8, 9), (12, 0)]
    assert args.config["profiles"] is None  # static network: Polygraphy's default profile
    assert "tf32" not in args.config and "load_timing_cache" not in args.config
    assert args.engine == {}  # a timing cache is a no-op on TensorRT for RTX


def test_datacenter_build_always_saves_a_timing_cache_into_the_output(tmp_path):
    args = backend.loader_arguments(DATACENTER, {}, Profiles(), fake_trt(), tmp_path / "t.cache")
    assert args.engine == {"save_timing_cache": str(tmp_path / "t.cache")}
    assert "load_timing_cache" not in args.config


LACKING = [
    ({"strip_plan": True}, {"BuilderFlag": "STRIP_PLAN"}, "strip_plan"),
    ({"optimization_level": 3}, {"IBuilderConfig": "builder_optimization_level"}, ""),
    ({"hardware_compatibility_level": "none"}, {"HardwareCompatibilityLevel": "NONE"}, ""),
    ({"memory_pools": {"dla_managed_sram": 1}}, {}, "memory_pools.dla_managed_sram"),
]


@pytest.mark.parametrize(("options", "drop", "option"), LACKING)
def test_an_option_the_installed_version_lacks_names_option_and_version(options, drop, option):
    option = option or next(iter(options))
    with pytest.raises(backend.BackendOptionError) as caught:
        backend.loader_arguments(DATACENTER, options, Profiles(), fake_trt(**drop))
    assert caught.value.option == option
    assert f"'{option}'" in caught.value.message and "10.99.0" in caught.value.message


def test_unknown_compute_capability_names_the_option():
    with pytest.raises(backend.BackendOptionError, match=r"ComputeCapability.SM90.*10\.99\.0"):
        backend.loader_arguments(RTX, {"compute_capabilities": ["9.0"]}, Profiles(), fake_trt())


CAPABILITIES = [(8.9, "8.9"), ("12.0", "12.0"), ("sm86", "8.6"), ("SM121", "12.1")]


@pytest.mark.parametrize(("text", "expected"), [*CAPABILITIES, (12, None), ("121", None)])
def test_compute_capabilities_are_normalized(text, expected):
    if expected is None:  # bare digits are ambiguous
        with pytest.raises(ValueError):
            BuildSpec.model_validate({"tensorrt_rtx": {"compute_capabilities": [text]}})
        return
    spec = BuildSpec.model_validate({"tensorrt_rtx": {"compute_capabilities": [text]}})
    assert spec.tensorrt_rtx.compute_capabilities == [expected]


# --- profiles -------------------------------------------------------------------------------

INFOS = [
    InputInfo("ids", "int64", ("batch", "sequence")),
    InputInfo("mask", "int64", ("batch", "sequence")),
    InputInfo("scale", "float32", (1,)),
]


def test_one_profile_per_input_and_a_dynamic_input_without_one_is_fixed_at_check_dims():
    given = {"ids": [((1, 1), (4, 16), (8, 64))]}
    result = derive_profiles(INFOS, given, {"batch": 2, "sequence": 8})
    assert result.profiles == [{"ids": ((1, 1), (4, 16), (8, 64)), "mask": ((2, 8),) * 3}]
    assert "'mask' is dynamic and has no profile" in result.notes[0]


def test_several_profiles_pair_up_and_a_single_one_is_shared():
    given = {
        "ids": [((1, 1), (1, 8), (1, 16)), ((8, 1), (8, 64), (8, 128))],
        "mask": [((1, 1), (4, 8), (8, 128))],
    }
    result = derive_profiles(INFOS, given, {})
    assert [p["ids"][1] for p in result.profiles] == [(1, 8), (8, 64)]
    assert [p["mask"] for p in result.profiles] == [given["mask"][0]] * 2
    assert result.notes == []
    assert result.to_json()[1]["ids"] == {"min": [8, 1], "opt": [8, 64], "max": [8, 128]}


def test_profiles_that_do_not_fit_the_input_are_data_errors():
    with pytest.raises(DataError, match=r"\[1, 3\] of input 'scale' does not fit"):
        derive_profiles(INFOS, {"scale": [((1, 3), (1, 3), (1, 3))]}, {}, lambda n: f"here:{n}")
    with pytest.raises(DataError, match="different numbers of profiles"):
        two, three = [((1, 1),) * 3] * 2, [((1, 1),) * 3] * 3
        derive_profiles(INFOS, {"ids": two, "mask": three}, {})


def test_input_spec_validates_profiles():
    with pytest.raises(ValueError, match="min <= opt <= max"):
        InputSpec.model_validate({"profile": {"min": [4], "opt": [2], "max": [8]}})
    with pytest.raises(ValueError, match="either `profile` or `profiles`"):
        one = {"min": [1], "opt": [1], "max": [1]}
        InputSpec.model_validate({"profile": one, "profiles": [one]})
    with pytest.raises(ValueError, match="profile has 1 dims, the shape has 2"):
        InputSpec.model_validate(
            {"shape": ["b", 3], "profile": {"min": [1], "opt": [1], "max": [1]}}
        )


def test_a_recipe_profile_error_names_its_line(write_recipe):
    path = write_recipe(
        f"name: bad\nmodel: {QUICKSTART.parent / 'models' / 'quickstart.onnx'}\n"
        "inputs:\n  pixel_values:\n    profile: {min: [1, 3, 32, 32], opt: [4, 3, 32, 32], "
        "max: [2, 3, 32, 32]}\nbuild: {backend: tensorrt-rtx}\n"
    )
    with pytest.raises(RecipeError, match=r"recipe.yaml:5:\d+: .*min <= opt <= max"):
        trtopt.load_recipe(path)


# --- without the package --------------------------------------------------------------------


def test_import_and_cli_never_import_tensorrt():
    code = (
        "import sys, trtopt, trtopt.cli, trtopt.backends.tensorrt, trtopt.lint;"
        "from trtopt.cli import main; main(['passes']);"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'tensorrt_rtx')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_missing_datacenter_tensorrt_reports_everything_else_then_exits_2(tmp_path, monkeypatch):
    missing = dataclasses.replace(backend.FLAVOURS["tensorrt"], module="trtopt_no_such_module")
    monkeypatch.setitem(backend.FLAVOURS, "tensorrt", missing)
    out = tmp_path / "out"
    recipe = ROOT / "recipes" / "quickstart-tensorrt.yaml"
    overrides = [
        "check.samples=2",
        "check.latency_runs=0",
        f"build.tensorrt.timing_cache={tmp_path / 'c'}",
    ]
    with pytest.raises(BackendUnavailableError) as caught:
        trtopt.compile(recipe, output_dir=out, overrides=overrides)
    assert caught.value.exit_code == EXIT_USER
    assert "pip install 'trtopt[tensorrt]'" in str(caught.value)
    assert "quickstart-tensorrt.yaml:" in str(caught.value.place)
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "incomplete" and report["exit_code"] == EXIT_USER
    assert report["build"]["status"] == "unavailable"
    assert report["accuracy"]["verdict"] == "pass"
    assert report["accuracy"]["checked"] == EMULATED_CHECKED
    assert len(report["passes"]) == len(trtopt.load_recipe(recipe).passes)
    assert (out / "model.onnx").is_file()


def test_missing_backend_through_the_cli_exits_2(tmp_path, monkeypatch, capsys):
    missing = dataclasses.replace(backend.FLAVOURS["tensorrt-rtx"], module="trtopt_no_such_module")
    monkeypatch.setitem(backend.FLAVOURS, "tensorrt-rtx", missing)
    from trtopt.cli import main

    recipe = ROOT / "recipes" / "quickstart-rtx.yaml"
    code = main(["compile", str(recipe), "-o", str(tmp_path / "o"), "--set", "check.samples=1"])
    assert code == EXIT_USER
    assert "pip install 'trtopt[rtx]'" in capsys.readouterr().err
    with pytest.raises(BackendUnavailableError, match=r"trtopt\[rtx\]"):
        backend.import_tensorrt(missing)
