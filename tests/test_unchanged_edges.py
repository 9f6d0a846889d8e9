"""The direct entry (unchanged.py, front.py) at its edges: a compile served from an unchanged
recipe's files alone must do what the full pipeline would do. Each test here failed when a
review wrote it; it states what the full path does and expects the direct path to agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import trtopt
from helpers import NOOP_PLUGIN, ROOT
from trtopt import pipeline

QUICKSTART_MODEL = ROOT / "recipes" / "models" / "quickstart.onnx"


# The same pass name, but it raises: with `strict: true` a rollback fails the compile (exit 1).
BROKEN_NOOP_PLUGIN = NOOP_PLUGIN.replace("return graph", "raise RuntimeError('broken on purpose')")


def _feed(folder: Path, name: str, seed: int) -> None:
    values = np.random.default_rng(seed).random((1, 3, 32, 32), dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / name, pixel_values=values)


def _recipe(tmp_path: Path, **changes) -> dict:
    model = tmp_path / "model.onnx"
    if not model.exists():
        model.write_bytes(QUICKSTART_MODEL.read_bytes())
    _feed(tmp_path / "data", "a.npz", 0)
    recipe = {
        "name": "review",
        "model": str(model),
        "inputs": {"pixel_values": {"shape": ["batch", 3, 32, 32]}},
        "passes": ["cleanup"],
        "check": {
            "samples": 1,
            "data": {"npz": str(tmp_path / "data" / "*.npz")},
            "latency_runs": 0,
        },
        "output": str(tmp_path / "out"),
    }
    recipe.update(changes)
    return recipe


def _write(path: Path, recipe: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _outcome(run) -> tuple[int, str]:
    """(exit code, error message) of a compile: a result's code, or a TrtoptError's."""
    try:
        result = run()
    except trtopt.TrtoptError as error:
        return error.exit_code, str(error)
    return result.exit_code, ""


# -- the golden file's metadata JSON is an input the direct entry does not record -----------


@pytest.mark.parametrize("damage", ["deleted", "edited"])
def test_golden_metadata_json_is_an_input_of_the_direct_entry(tmp_path, hallway, damage):
    """load_golden reads golden.npz AND golden.json (metadata_path) before any work; the full
    path refuses a compile whose golden.json is gone or edited (GoldenError, exit 2). The
    direct entry records only golden.npz, so it serves the old passing compile (exit 0)."""
    golden = tmp_path / "golden" / "review.npz"
    data = _recipe(tmp_path)
    data["check"]["golden"] = str(golden)
    recipe = _write(tmp_path / "recipe.yaml", data)
    trtopt.update_golden(recipe)
    assert trtopt.compile(recipe).exit_code == 0
    meta = golden.with_suffix(".json")
    if damage == "deleted":
        meta.unlink()
    else:
        data = json.loads(meta.read_text())
        data["thresholds"] = {"default": {"cosine": 0.5}}
        meta.write_text(json.dumps(data))
    full = _outcome(lambda: trtopt.compile(recipe, use_cache=False))
    assert full[0] == 2  # the full path: a GoldenError before any work
    served = _outcome(lambda: trtopt.compile(recipe))
    assert served == full


# -- a plugin reached through a symlink is recorded by its target ---------------------------


def test_a_plugin_symlink_pointed_elsewhere_is_not_served(tmp_path, hallway):
    """plugin_files() resolves the plugin's path, so the direct entry records the symlink's
    *target*. Pointing the symlink at another file (a common way to switch versions) leaves
    that target unchanged: the old compile is served, while the full path imports the new
    file (here a pass that raises, which `strict: true` turns into exit 1)."""
    (tmp_path / "v1.py").write_text(NOOP_PLUGIN)
    (tmp_path / "v2.py").write_text(BROKEN_NOOP_PLUGIN)
    link = tmp_path / "noop.py"
    link.symlink_to(tmp_path / "v1.py")
    recipe = _write(
        tmp_path / "recipe.yaml",
        _recipe(tmp_path, passes=["cleanup", "noop"], plugins=[str(link)], strict=True),
    )
    assert trtopt.compile(recipe).exit_code == 0
    link.unlink()
    link.symlink_to(tmp_path / "v2.py")
    full = _outcome(lambda: trtopt.compile(recipe, use_cache=False))
    assert full[0] == 1  # the full path imports v2.py: rolled back, and strict
    assert _outcome(lambda: trtopt.compile(recipe)) == full


# -- the recipe file's own folder decides the default output, but is not in the key ---------


def test_the_default_output_is_beside_the_recipe_that_was_compiled(tmp_path, hallway):
    """Without `output`, the output is build/<name> beside the recipe file. Two recipe files
    whose YAML is the same once merged (here both only `extends` a shared base) have one
    direct key, and the candidate remembers the first one's output folder: compiling the
    second writes into the FIRST one's build folder and says so."""
    base = _recipe(tmp_path)
    del base["output"]
    _write(tmp_path / "base.yaml", base)
    first = _write(tmp_path / "team-a" / "recipe.yaml", {"extends": "../base.yaml"})
    second = _write(tmp_path / "team-b" / "recipe.yaml", {"extends": "../base.yaml"})
    a = trtopt.compile(first)
    assert a.output_dir == (tmp_path / "team-a" / "build" / "review").resolve()
    b = trtopt.compile(second)
    assert b.output_dir == (tmp_path / "team-b" / "build" / "review").resolve()
    assert (tmp_path / "team-b" / "build" / "review" / "report.json").is_file()


def test_the_default_output_refuses_to_replace_the_recipes_own_folder(tmp_path, hallway):
    """The full path refuses an output folder that holds the recipe file (it is an input):
    exit 2. The direct path checks the FIRST recipe file's inputs, so for a second recipe
    whose merged YAML is the same it replaces (with --force) the folder holding that
    second recipe file, deleting it."""
    base = _recipe(tmp_path)
    del base["output"]
    _write(tmp_path / "base.yaml", base)
    first = _write(tmp_path / "a" / "recipe.yaml", {"extends": "../base.yaml"})
    second = _write(tmp_path / "b" / "recipe.yaml", {"extends": "../base.yaml"})
    trtopt.compile(first)
    full = _outcome(
        lambda: trtopt.compile(second, output_dir=tmp_path / "b", force=True, use_cache=False)
    )
    assert full[0] == 2 and "holds an input" in full[1]
    served = _outcome(lambda: trtopt.compile(second, output_dir=tmp_path / "b", force=True))
    assert second.is_file(), "the direct path replaced the folder holding the recipe file"
    assert served == full


# -- `--set plugins=...` stays relative to the current folder --------------------------------


def test_a_relative_plugin_override_from_another_folder_is_not_served(
    tmp_path, hallway, monkeypatch
):
    """parse_override makes PATH_FIELDS absolute against the current folder, but `plugins`
    (a list, not in PATH_FIELDS) stays relative: the key holds "noop.py", while the
    candidate records the file it resolved to then. From another folder holding another
    noop.py, the key matches and the first folder's file is unchanged: served, whereas the
    full path imports the noop.py of the current folder."""
    recipe = _write(tmp_path / "recipe.yaml", _recipe(tmp_path, strict=True))
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "noop.py").write_text(NOOP_PLUGIN)
    (two / "noop.py").write_text(BROKEN_NOOP_PLUGIN)
    overrides = ["plugins=[noop.py]", "passes=[cleanup, noop]"]
    monkeypatch.chdir(one)
    assert trtopt.compile(recipe, overrides=overrides).exit_code == 0
    monkeypatch.chdir(two)
    full = _outcome(lambda: trtopt.compile(recipe, overrides=overrides, use_cache=False))
    served = _outcome(lambda: trtopt.compile(recipe, overrides=overrides))
    assert served == full


# -- the key's JSON turns non-JSON YAML values into strings ----------------------------------


def test_a_recipe_that_became_invalid_is_not_served(tmp_path, hallway):
    """digest() dumps with default=str, so the YAML date 2024-01-01 and the string
    "2024-01-01" give one key. A recipe whose name was quoted and then is not is invalid for
    the schema (name: a string; exit 2 on the full path), yet it is served (exit 0)."""
    data = _recipe(tmp_path, name="2024-01-01")
    path = tmp_path / "recipe.yaml"
    _write(path, data)
    assert "'2024-01-01'" in path.read_text()  # quoted: a string
    assert trtopt.compile(path).exit_code == 0
    path.write_text(path.read_text().replace("'2024-01-01'", "2024-01-01"))
    full = _outcome(lambda: trtopt.compile(path, use_cache=False))
    assert full[0] == 2
    served = _outcome(lambda: trtopt.compile(path))
    assert served == full


# -- the direct entry hashes its files after the compile, not before it ----------------------


def test_a_data_file_changed_during_the_compile_is_not_served_later(tmp_path, hallway, monkeypatch):
    """direct_candidate() hashes the files when the compile has finished (pipeline._remember),
    not the bytes the compile read. A data file (or plugin, or model) edited while a long
    compile runs is recorded with its NEW sha256 next to the compile of the OLD bytes: every
    later compile of the new file is served the stale result, while the full path (whose
    compile key hashes the data it read) compiles the new data."""
    recipe = _write(tmp_path / "recipe.yaml", _recipe(tmp_path))
    real_work = pipeline._work

    def edited_meanwhile(*args, **kwargs):
        done = real_work(*args, **kwargs)  # the data was read
        _feed(tmp_path / "data", "a.npz", 7)  # the user writes new data before it ends
        return done

    monkeypatch.setattr(pipeline, "_work", edited_meanwhile)
    first = trtopt.compile(recipe)
    monkeypatch.setattr(pipeline, "_work", real_work)
    again = trtopt.compile(recipe)
    assert first.exit_code == 0
    assert len(hallway) == 2, "the new data was never compiled, yet it was served directly"
    assert again.report["cache"]["compile"] == "miss"


def test_a_recipe_edited_while_the_pipeline_reads_it_is_not_served_later(
    tmp_path, hallway, monkeypatch
):
    """The recipe is read once: the key and the compile come from the same YAML, so an edit
    after the lookup neither reaches this compile nor is recorded under the old key."""
    path = _write(tmp_path / "recipe.yaml", _recipe(tmp_path))
    original = path.read_text()
    edited = original.replace("name: review", "name: edited")
    real_load = pipeline.load_recipe

    def edited_meanwhile(recipe, overrides=None, *args, **kwargs):
        path.write_text(edited)
        return real_load(recipe, overrides, *args, **kwargs)

    monkeypatch.setattr(pipeline, "load_recipe", edited_meanwhile)
    assert trtopt.compile(path).report["recipe"]["name"] == "review"
    monkeypatch.setattr(pipeline, "load_recipe", real_load)
    path.write_text(original)
    back = trtopt.compile(path)
    assert back.report["recipe"]["name"] == "review", "served the edited recipe's compile"


# -- Pillow decides the feeds of an images source, and is in no key of the direct entry -----


def test_an_images_recipe_is_not_served_after_pillow_changes(tmp_path, hallway, monkeypatch):
    """An images source's feeds are Pillow's decode (convert, resize, crop) of the files:
    the full path hashes the decoded check feeds into the compile key (compile_settings'
    check_data), so a Pillow that decodes otherwise compiles anew. The direct key holds
    cache.environment() and DIRECT_PACKAGES, neither of which names Pillow: after an upgrade
    the old compile is served. (Simulated: another version, and a decode that differs.)"""
    from PIL import Image

    from trtopt import unchanged
    from trtopt.calibration import sources

    (tmp_path / "images").mkdir()
    pixels = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "images" / "a.png")
    recipe = _recipe(tmp_path)
    recipe["check"]["data"] = {"images": {"folder": str(tmp_path / "images")}}
    path = _write(tmp_path / "recipe.yaml", recipe)
    trtopt.compile(path)

    real_installed, real_load = unchanged.installed, sources.load_image
    monkeypatch.setattr(
        unchanged, "installed", lambda p: "999.0" if p.lower() == "pillow" else real_installed(p)
    )
    monkeypatch.setattr(sources, "load_image", lambda *a, **k: real_load(*a, **k) * 0.5)
    again = trtopt.compile(path)
    assert len(hallway) == 2, "served the compile of feeds another Pillow decoded"
    assert again.report["cache"]["compile"] == "miss"


# -- a hand-edited direct entry chooses the output folder -----------------------------------


def test_the_output_folder_comes_from_the_recipe_not_from_the_cache(tmp_path, hallway):
    """serve_direct writes to candidate["output"] (and checks candidate["inputs"]), both read
    from the cache. A direct entry edited by hand (or written by another user of a shared
    cache; only its JSON shape is checked) sends the compile's output to a folder the recipe
    never named, with --force replacing whatever is there. The compile entries never decide
    where an output goes: the recipe does (the full path's recipe.output_dir())."""
    from trtopt import unchanged
    from trtopt.cache import StageCache

    path = _write(tmp_path / "recipe.yaml", _recipe(tmp_path))
    trtopt.compile(path)
    direct = unchanged.find_direct(path, None, None)
    assert direct is not None
    entry = direct.store.get(direct.key)
    candidates = [dict(c) for c in entry.meta["candidates"]]
    elsewhere = tmp_path / "elsewhere"
    candidates[0]["output"] = str(elsewhere)
    with StageCache(direct.store.root).writer(direct.key, unchanged.DIRECT, replace=True) as w:
        w.meta = {"candidates": candidates}
    result = trtopt.compile(path)
    assert result.output_dir == (tmp_path / "out").resolve()
    assert not elsewhere.exists()


def test_a_recipe_with_mixed_key_types_is_a_recipe_error_not_a_crash(tmp_path, hallway):
    """find_direct computes direct_key(data) on the raw YAML: digest() sorts keys, and a
    mapping with an int key beside str keys (`dims: {batch: 1, 7: 2}`, a typo) raises
    TypeError outside find_direct's `except TrtoptError`. `trtopt compile` then ends with
    "internal error: TypeError" (exit 3) where the full path says
    "check.dims.7: Input should be a valid string" (exit 2), even with an empty cache."""
    recipe = _recipe(tmp_path)
    recipe["check"]["dims"] = {"batch": 1, 7: 2}
    path = _write(tmp_path / "recipe.yaml", recipe)
    full = _outcome(lambda: trtopt.compile(path, use_cache=False))
    assert full[0] == 2 and "check.dims.7" in full[1]
    assert _outcome(lambda: trtopt.compile(path)) == full


def test_a_renamed_base_recipe_is_still_an_input_of_the_compile(tmp_path, hallway):
    """`extends` is popped from the merged YAML, so moving the base recipe to another file
    (and pointing `extends` at it) keeps the direct key. The inputs an output may not hold are
    the candidate's, recorded with the OLD base's path: -o naming the folder of the new base
    with --force replaces it and deletes the base recipe; the full path refuses (exit 2)."""
    base = _recipe(tmp_path)
    _write(tmp_path / "base.yaml", base)
    path = _write(tmp_path / "recipe.yaml", {"extends": "base.yaml"})
    trtopt.compile(path)
    moved = _write(tmp_path / "shared" / "base.yaml", base)
    (tmp_path / "base.yaml").unlink()
    _write(path, {"extends": "shared/base.yaml"})
    out = tmp_path / "shared"
    full = _outcome(lambda: trtopt.compile(path, output_dir=out, force=True, use_cache=False))
    assert full[0] == 2 and "holds an input" in full[1]
    served = _outcome(lambda: trtopt.compile(path, output_dir=out, force=True))
    assert moved.is_file(), "the direct path deleted the base recipe"
    assert served == full
