"""Output folders trtopt owns: a compile replaces only a folder it wrote (marked), an empty
or a new one; never a file, a symlink, or a folder holding the compile's own inputs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import trtopt
from helpers import MODELS, RANGES, hostile_recipe
from trtopt.cli import main
from trtopt.staging import MARKER, OutputError

MODEL = MODELS / "cnn_legacy.onnx"


def _recipe(folder: Path, **overrides: object) -> Path:
    """A quick recipe beside a copy of the model in ``folder/models``."""
    (folder / "models").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODEL, folder / "models" / "cnn.onnx")
    recipe = {
        "name": "cnn",
        "model": "models/cnn.onnx",
        "inputs": {"pixel_values": {"range": list(RANGES["pixel_values"])}},
        "passes": ["cleanup"],
        "check": {"samples": 1, "latency_runs": 0, "dims": {"batch": 1}},
        **overrides,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _refused(capsys, *argv: str) -> str:
    assert main(["compile", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err


def test_a_folder_trtopt_did_not_write_is_never_replaced(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "IMPORTANT.txt").write_text("keep")
    recipe = _recipe(tmp_path / "r", output="../victim")
    err = _refused(capsys, str(recipe))
    assert str(victim) in err and "not written by trtopt" in err and "--force" in err
    assert (victim / "IMPORTANT.txt").read_text() == "keep"
    with pytest.raises(OutputError):
        trtopt.compile(recipe, use_cache=False)
    assert (victim / "IMPORTANT.txt").read_text() == "keep"


def test_force_replaces_a_foreign_non_empty_folder(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "old.txt").write_text("old")
    recipe = _recipe(tmp_path / "r", output="../victim")
    assert main(["compile", str(recipe), "--no-cache", "--force"]) == 0
    assert (victim / "model.onnx").is_file() and (victim / MARKER).is_file()
    assert not (victim / "old.txt").exists()


def test_a_folder_trtopt_wrote_is_replaced_and_an_empty_one_used(tmp_path):
    recipe = _recipe(tmp_path / "r")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert trtopt.compile(recipe, output_dir=empty, use_cache=False).exit_code == 0
    assert (empty / MARKER).is_file()
    (empty / "stale.txt").write_text("from an earlier compile")
    assert trtopt.compile(recipe, output_dir=empty, use_cache=False).exit_code == 0
    assert not (empty / "stale.txt").exists()


@pytest.mark.parametrize("output", [".", "models", "..", "models/cnn.onnx"])
def test_the_recipe_and_the_model_are_never_replaced(tmp_path, capsys, output):
    recipe = _recipe(tmp_path / "r", output=output)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    err = _refused(capsys, str(recipe), "--force", "--no-cache")
    assert "error:" in err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "r" / "models" / "cnn.onnx").read_bytes() == MODEL.read_bytes()


def test_data_golden_and_cache_folders_are_never_replaced(tmp_path, capsys):
    recipe = _recipe(tmp_path / "r", output="data")
    (tmp_path / "r" / "data").mkdir()
    (tmp_path / "r" / "data" / "a.npz").write_bytes(b"")
    text = recipe.read_text() + "data: {calibration: {npz: data/*.npz}}\n"
    recipe.write_text(text)
    assert "data" in _refused(capsys, str(recipe), "--force", "--no-cache")
    assert (tmp_path / "r" / "data" / "a.npz").exists()
    # The cache folder inside the output folder: every compile would wipe it.
    cache = tmp_path / "out" / "cache"
    cache.mkdir(parents=True)
    err = _refused(capsys, str(recipe), "-o", str(tmp_path / "out"), "--cache-dir", str(cache))
    assert "cache" in err and cache.is_dir()
    # With the cache off for this compile, the folder is still the user's cache.
    err = _refused(capsys, str(recipe), "-o", str(cache), "--cache-dir", str(cache), "--no-cache",
                   "--force")  # fmt: skip
    assert "cache" in err and cache.is_dir()


def test_a_file_is_never_replaced(tmp_path, capsys):
    recipe = _recipe(tmp_path / "r")
    target = tmp_path / "file.onnx"
    target.write_text("mine")
    err = _refused(capsys, str(recipe), "-o", str(target), "--force", "--no-cache")
    assert "file" in err and target.read_text() == "mine"


def test_a_symlink_is_never_followed_or_replaced(tmp_path, capsys):
    recipe = _recipe(tmp_path / "r")
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    err = _refused(capsys, str(recipe), "-o", str(link), "--force", "--no-cache")
    assert "symlink" in err
    assert link.is_symlink() and (real / "keep.txt").read_text() == "keep"


def test_output_folders_get_the_users_umask(tmp_path):
    recipe = _recipe(tmp_path / "r")
    old = os.umask(0o022)
    try:
        trtopt.compile(recipe, output_dir=tmp_path / "out", use_cache=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def test_user_code_is_imported_without_writing_bytecode_beside_it(tmp_path):
    """A plugin and a data script are run, not compiled into a __pycache__ folder beside them:
    trtopt writes only its output and its cache. Run with Python's bytecode writing on, as a
    user's shell has it."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "plugin.py").write_text(
        "from trtopt import Pass, register_pass\n\n"
        "@register_pass('noop-plugin')\n"
        "class Noop(Pass):\n"
        "    def run(self, graph, ctx):\n"
        "        return graph\n"
    )
    (user / "data.py").write_text(
        "import numpy as np\n\n"
        "def load_data():\n"
        "    yield {'pixel_values': np.ones((1, 3, 32, 32), np.float32)}\n"
    )
    recipe = hostile_recipe(
        user,
        plugins=["plugin.py"],
        passes=["noop-plugin"],
        check={"samples": 1, "latency_runs": 0, "data": {"script": "data.py"}},
        output=str(tmp_path / "out"),
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(
        [sys.executable, "-m", "trtopt", "compile", str(recipe), "--no-cache"],
        capture_output=True,
        text=True,
        env={**env, "PYTHONWARNINGS": "ignore"},
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in user.iterdir()) == ["data.py", "plugin.py", "recipe.yaml"]
