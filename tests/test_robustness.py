"""Interrupted compiles (SIGINT, SIGTERM, SIGKILL at random moments) leave the previous output
and the cache intact; unsafe models and recipes are refused."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import trtopt
from helpers import ROOT
from trtopt import ModelError, RecipeError
from trtopt.cache import LAYOUT, StageCache
from trtopt.model import load_model, model_sha256
from trtopt.staging import commit, stage

QUICKSTART_MODEL = ROOT / "recipes" / "models" / "quickstart.onnx"


def _recipe(out: Path, seed: int) -> dict:
    return {
        "name": "victim",
        "model": str(QUICKSTART_MODEL),
        "inputs": {"pixel_values": {"range": [0.0, 1.0]}},
        "passes": [
            "cleanup",
            {"fold-constants": {"size_threshold": "16MiB"}},
            {"fuse": {"fusions": ["conv-bn"]}},
            "infer-shapes",
            "cleanup",
        ],
        "check": {"samples": 2, "seed": seed, "dims": {"batch": 2}, "latency_runs": 0},
        "output": str(out),
    }


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def _assert_cache_intact(root: Path) -> int:
    """Every published entry is complete and verifies; returns how many there are."""
    store = StageCache(root)
    entries = sorted((root / LAYOUT / "entries").glob("*/*"))
    for entry in entries:
        assert store.get(entry.name) is not None, f"damaged or half-written entry {entry}"
    return len(entries)


@pytest.mark.slow
def test_killed_compiles_leave_the_previous_output_and_the_cache_intact(tmp_path, write_recipe):
    out, cache = tmp_path / "out", tmp_path / "cache"
    command = [sys.executable, "-m", "trtopt", "compile", "--cache-dir", str(cache)]
    first = write_recipe(_recipe(out, seed=0), "r0.yaml")
    subprocess.run([*command, str(first)], check=True, capture_output=True, timeout=300)
    start = time.perf_counter()
    subprocess.run(
        [*command, str(write_recipe(_recipe(out, 99), "probe.yaml")), "-o", str(tmp_path / "p")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    duration = time.perf_counter() - start  # a compile whose check misses, passes hit
    rng = random.Random(20240607)
    signals = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGKILL]
    rng.shuffle(signals)
    for round_, sig in enumerate(signals, start=1):
        previous = _digest(out)
        recipe = write_recipe(_recipe(out, seed=round_), f"r{round_}.yaml")
        # Odd rounds start cold, so kills also land while cache entries are written.
        cache_args = ["--cache-dir", str(cache if round_ % 2 else tmp_path / f"c{round_}")]
        proc = subprocess.Popen(
            [*command[:-2], *cache_args, str(recipe)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(rng.uniform(0.2, 1.2) * duration)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        now = _digest(out)
        # Either the previous output, untouched, or the complete new one (a signal may land
        # after the new output is in place, while the process prints or exits).
        if proc.returncode == 0 or now != previous:
            report = json.loads((out / "report.json").read_text())
            assert report["recipe"]["check"]["seed"] == round_, f"{sig!r}: mixed output"
            assert report["build"]["sha256"] == now["model.onnx"]
        if proc.returncode != 0 and sig != signal.SIGKILL:
            # its own cleanup ran: it left no staging folder behind
            assert not list(tmp_path.glob(f".out.*-{proc.pid}-*")), err.decode()
        assert "model.onnx" in now and "report.json" in now
        load_model(out / "model.onnx")
        _assert_cache_intact(cache)
        _assert_cache_intact(tmp_path / f"c{round_}")
    # A later compile sweeps up what SIGKILL left behind and reuses the intact cache.
    result = trtopt.compile(first, cache_dir=cache)
    assert result.exit_code == 0
    assert not list(tmp_path.glob(".out.*"))
    assert _assert_cache_intact(cache) > 0


def test_a_kill_between_the_fallback_renames_is_repaired(tmp_path):
    """Where the output cannot be swapped atomically, the old output is renamed aside first;
    a kill right then strands it, and the next compile puts it back."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("previous")
    pid = subprocess.Popen([sys.executable, "-c", "pass"])
    pid.wait()
    host = __import__("socket").gethostname()
    stranded = tmp_path / f".out.old-{host}-{pid.pid}-abcd1234"
    stranded.mkdir()
    os.rename(out, stranded / "out")
    leftover = tmp_path / f".out.staging-{host}-{pid.pid}-efgh5678"
    leftover.mkdir()

    staging = stage(out)
    assert (out / "model.onnx").read_text() == "previous"
    assert not stranded.exists() and not leftover.exists()
    (staging / "model.onnx").write_text("new")
    commit(staging, out)
    assert (out / "model.onnx").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_running_compiles_staging_folders_are_left_alone(tmp_path):
    out = tmp_path / "out"
    mine = stage(out)  # this process is alive
    other = stage(out)
    assert mine.exists() and other.exists()


# -- unsafe models ---------------------------------------------------------------------------


def _external(tensor: TensorProto, location: str) -> None:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location


def _model_with(weight_location: str | None = None, constant_location: str | None = None):
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    value = numpy_helper.from_array(np.ones((4, 4), np.float32), "c")
    if weight_location:
        _external(weight, weight_location)
    if constant_location:
        _external(value, constant_location)
    nodes = [
        helper.make_node("Constant", [], ["c"], value=value),
        helper.make_node("MatMul", ["x", "w"], ["t"]),
        helper.make_node("Add", ["t", "c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize(
    ("weight", "constant"),
    [
        ("../secret.bin", None),
        (None, "../secret.bin"),  # a Constant node's tensor attribute
        ("sub/../../secret.bin", None),
        ("link.bin", None),  # a symlink inside the folder pointing out of it
    ],
)
def test_external_data_escaping_the_model_folder_is_refused(tmp_path, weight, constant):
    (tmp_path / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "link.bin").symlink_to(tmp_path / "secret.bin")
    onnx.save(_model_with(weight, constant), str(folder / "m.onnx"))
    with pytest.raises(ModelError, match="outside the model's folder") as info:
        load_model(folder / "m.onnx")
    assert info.value.exit_code == 2
    with pytest.raises(ModelError, match="outside the model's folder"):
        model_sha256(folder / "m.onnx")


def test_an_escaping_model_named_by_a_recipe_exits_2(tmp_path, write_recipe):
    (tmp_path / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(_model_with("../secret.bin"), str(folder / "m.onnx"))
    recipe = write_recipe({"name": "escape", "model": "model/m.onnx", "check": {"samples": 1}})
    with pytest.raises(ModelError, match="outside the model's folder") as info:
        trtopt.compile(recipe)
    assert info.value.exit_code == 2 and "recipe.yaml" in str(info.value)


# -- unsafe recipes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/name:os.system",
        "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    ],
)
def test_recipes_load_with_the_safe_loader_only(tmp_path, write_recipe, tag):
    marker = tmp_path / "pwned"
    path = write_recipe(f"name: x\nmodel: m.onnx\noutput: {tag.format(marker=marker)}\n")
    with pytest.raises(RecipeError) as info:
        trtopt.load_recipe(path)
    assert info.value.exit_code == 2
    assert not marker.exists()


def test_plugins_run_only_from_files_the_recipe_names(tmp_path, write_recipe):
    """A `passes/` folder beside a recipe is not imported unless the recipe names a file."""
    (tmp_path / "passes").mkdir()
    marker = tmp_path / "imported"
    (tmp_path / "passes" / "sneaky.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    path = write_recipe({"name": "x", "model": str(QUICKSTART_MODEL), "passes": ["cleanup"]})
    trtopt.load_recipe(path)
    assert not marker.exists()
