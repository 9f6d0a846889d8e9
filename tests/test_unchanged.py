"""An unchanged recipe is served from its files alone (its direct entry in the stage cache),
and only then: a changed model, data file, plugin or override goes down the pipeline again,
and a damaged entry or `--no-cache` never serves anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import trtopt
from helpers import NOOP_PLUGIN, ROOT
from trtopt import unchanged
from trtopt.cache import StageCache

QUICKSTART_MODEL = ROOT / "recipes" / "models" / "quickstart.onnx"


def _recipe(tmp_path: Path, model: Path, **changes) -> dict:
    recipe = {
        "name": "direct",
        "model": str(model),
        "inputs": {"pixel_values": {"shape": ["batch", 3, 32, 32]}},
        "passes": ["cleanup", "noop"],
        "plugins": [str(tmp_path / "noop.py")],
        "check": {
            "samples": 2,
            "data": {"npz": str(tmp_path / "data" / "*.npz")},
            "latency_runs": 0,
        },
        "output": str(tmp_path / "out"),
    }
    recipe.update(changes)
    return recipe


def _feed(tmp_path: Path, name: str, seed: int) -> None:
    values = np.random.default_rng(seed).random((1, 3, 32, 32), dtype=np.float32)
    (tmp_path / "data").mkdir(exist_ok=True)
    np.savez(tmp_path / "data" / name, pixel_values=values)


@pytest.fixture
def setup(tmp_path, write_recipe) -> tuple[Path, Path]:
    """A recipe with a plugin and npz check data, and its model (a copy)."""
    model = tmp_path / "model.onnx"
    model.write_bytes(QUICKSTART_MODEL.read_bytes())
    (tmp_path / "noop.py").write_text(NOOP_PLUGIN)
    _feed(tmp_path, "a.npz", 0)
    return write_recipe(_recipe(tmp_path, model)), model


def _renamed(model: Path, doc: str) -> None:
    """The same graph with another doc string: other bytes, same outputs."""
    proto = onnx.load(str(model))
    proto.doc_string = doc
    onnx.save(proto, str(model))


def test_an_unchanged_recipe_is_served_from_its_files(setup, hallway, tmp_path):
    recipe, _ = setup
    cold = trtopt.compile(recipe)
    warm = trtopt.compile(recipe)
    elsewhere = trtopt.compile(recipe, output_dir=tmp_path / "elsewhere")
    assert hallway == [str(recipe)]  # only the first compile ran the pipeline
    assert warm.report["cache"]["compile"] == elsewhere.report["cache"]["compile"] == "hit"
    assert warm.report["recipe"] == cold.report["recipe"]
    assert elsewhere.output_dir == (tmp_path / "elsewhere").resolve()
    assert elsewhere.report["output_dir"] == str(elsewhere.output_dir)
    for name in ("model.onnx", "report.md"):
        assert (tmp_path / "elsewhere" / name).is_file()
    assert (tmp_path / "out" / "model.onnx").read_bytes() == (
        tmp_path / "elsewhere" / "model.onnx"
    ).read_bytes()


@pytest.mark.parametrize("change", ["model", "new data file", "data file", "plugin", "override"])
def test_a_changed_input_goes_down_the_pipeline(setup, hallway, tmp_path, change):
    recipe, model = setup
    trtopt.compile(recipe)
    overrides = None
    if change == "model":
        _renamed(model, "another export")
    elif change == "new data file":
        _feed(tmp_path, "b.npz", 1)
    elif change == "data file":
        _feed(tmp_path, "a.npz", 2)
    elif change == "plugin":
        (tmp_path / "noop.py").write_text(NOOP_PLUGIN + "\n# edited\n")
    else:
        overrides = ["check.samples=1"]
    changed = trtopt.compile(recipe, overrides=overrides)
    again = trtopt.compile(recipe, overrides=overrides)
    assert hallway == [str(recipe)] * 2  # the change, then served directly again
    assert again.report["model"]["sha256"] == changed.report["model"]["sha256"]
    samples = 1 if change == "override" else 2 if change == "new data file" else 1
    assert again.report["accuracy"]["samples"] == samples


def test_switching_back_to_an_earlier_model_is_served_directly(setup, hallway):
    recipe, model = setup
    first = trtopt.compile(recipe)
    original = model.read_bytes()
    _renamed(model, "another export")
    trtopt.compile(recipe)
    model.write_bytes(original)
    back = trtopt.compile(recipe)
    assert len(hallway) == 2
    assert back.report["model"]["sha256"] == first.report["model"]["sha256"]


def test_a_damaged_direct_entry_serves_nothing(setup, hallway):
    recipe, _ = setup
    trtopt.compile(recipe)
    direct = unchanged.find_direct(recipe, None, None)
    assert direct is not None
    junk = [{"compile": 5}, "x", {"files": {}, "listings": [], "compile": "0" * 64}]
    with StageCache(direct.store.root).writer(direct.key, unchanged.DIRECT, replace=True) as w:
        w.meta = {"candidates": junk}
    result = trtopt.compile(recipe)
    assert len(hallway) == 2 and result.passed


def test_no_cache_reads_no_direct_entry(setup, hallway):
    recipe, _ = setup
    trtopt.compile(recipe)
    result = trtopt.compile(recipe, use_cache=False)
    assert len(hallway) == 2 and result.report["cache"] is None


def test_a_data_script_is_never_served_directly(tmp_path, write_recipe, hallway):
    script = tmp_path / "data.py"
    script.write_text(
        "import numpy as np\n"
        "def load_data():\n"
        "    yield {'pixel_values': np.zeros((1, 3, 32, 32), np.float32)}\n"
    )
    recipe = _recipe(tmp_path, QUICKSTART_MODEL, passes=["cleanup"], plugins=[])
    recipe["check"]["data"] = {"script": str(script)}
    path = write_recipe(recipe)
    trtopt.compile(path)
    again = trtopt.compile(path)
    assert len(hallway) == 2 and again.report["cache"]["compile"] == "hit"
