"""What a killed trtopt leaves behind is removed by the next run (issue 12, item 13).

SIGKILL runs no cleanup. Every temporary file or folder trtopt makes is named with its owner
(host and process id, ``staging.owner``): scratch folders in $TMPDIR, optimize's staging
folder beside its output, a golden file's partial file. The next compile, optimize, golden
write and ``trtopt cache prune`` remove those whose process is gone, and leave a live
process's alone.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import trtopt
from helpers import ROOT
from trtopt import golden
from trtopt.staging import owner

QUICKSTART_MODEL = ROOT / "recipes" / "models" / "quickstart.onnx"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _dead_owner() -> str:
    return f"{socket.gethostname()}-{_dead_pid()}-"


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp)}


def _kill_when(proc: subprocess.Popen, appears) -> list[Path]:
    """SIGKILL ``proc`` as soon as ``appears()`` finds something; returns what it found."""
    while proc.poll() is None:
        found = appears()
        if found:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return found
        time.sleep(0.01)
    pytest.fail(f"exited ({proc.returncode}) before the moment to kill it")


def _recipe(tmp_path: Path, write_recipe) -> Path:
    return write_recipe(
        {
            "name": "victim",
            "model": str(QUICKSTART_MODEL),
            "inputs": {"pixel_values": {"range": [0.0, 1.0]}},
            "passes": ["cleanup", "fold-constants", "infer-shapes"],
            "check": {"samples": 2, "dims": {"batch": 2}, "latency_runs": 0},
            "output": str(tmp_path / "out"),
        }
    )


def test_a_killed_compiles_scratch_folder_is_removed_by_the_next_compile(tmp_path, write_recipe):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    recipe = _recipe(tmp_path, write_recipe)
    command = [sys.executable, "-m", "trtopt", "compile", "--no-cache", str(recipe)]
    proc = subprocess.Popen(command, env=_env(tmp), stdout=subprocess.DEVNULL)
    left = _kill_when(proc, lambda: list(tmp.glob("trtopt-scratch-*")))
    assert left[0].name.startswith(f"trtopt-scratch-{socket.gethostname()}-{proc.pid}-")
    assert left[0].is_dir()
    # A live process's scratch folder is not touched.
    live = tmp / f"trtopt-scratch-{owner()}abcd1234"
    live.mkdir()
    done = subprocess.run(command, env=_env(tmp), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(tmp.glob("trtopt-*")) == [live]


def test_cache_prune_removes_dead_processes_scratch_folders(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = [tmp_path / f"trtopt-{kind}-{_dead_owner()}x_1y" for kind in ("scratch", "optimize")]
    for folder in dead:
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"x")
    live = tmp_path / f"trtopt-scratch-{owner()}abc"
    other_host = tmp_path / f"trtopt-scratch-elsewhere-{_dead_pid()}-abc"
    not_ours = tmp_path / f"scratch-{_dead_owner()}abc"
    for folder in (live, other_host, not_ours):
        folder.mkdir()
    result = trtopt.prune_cache(tmp_path / "cache")
    assert result.leftovers == 2
    assert sorted(tmp_path.iterdir()) == sorted([live, other_host, not_ours])


def test_a_killed_optimizes_staging_folder_is_removed_by_the_next_optimize(tmp_path):
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    tmp.mkdir()
    out.mkdir()
    command = [sys.executable, "-m", "trtopt", "optimize", str(QUICKSTART_MODEL)]
    proc = subprocess.Popen(
        [*command, str(out / "a.onnx")], env=_env(tmp), stdout=subprocess.DEVNULL
    )
    left = _kill_when(proc, lambda: list(out.glob(".a.onnx.*")))
    assert left[0].name.startswith(f".a.onnx.optimize-{socket.gethostname()}-{proc.pid}-")
    live = out / f".b.onnx.optimize-{owner()}abc"
    live.mkdir()
    done = subprocess.run(
        [*command, str(out / "b.onnx")], env=_env(tmp), capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == sorted([live.name, "b.onnx"])
    assert list(tmp.glob("trtopt-*")) == []  # its scratch folder went too


def _write(path: Path) -> None:
    feed = {"x": np.zeros((1, 2), np.float32)}
    golden.write_golden(path, [feed], [feed], {})


def test_a_golden_writes_partial_files_are_owned_and_removed(tmp_path):
    path = tmp_path / "g.npz"
    dead = tmp_path / f".g.npz.partial-{_dead_owner()}abcd"
    live = tmp_path / f".g.npz.partial-{owner()}abcd"
    for leftover in (dead, live):
        leftover.write_bytes(b"half")
    _write(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["g.npz", "g.json", live.name])
    assert golden.load_golden(path).inputs[0]["x"].shape == (1, 2)


def test_a_full_disk_leaves_no_partial_golden_file(tmp_path, monkeypatch):
    real_open = open

    class Full:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

        def write(self, data):
            self.stream.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(file, mode="r", *args, **kwargs):
        return Full(real_open(file, mode, *args, **kwargs))

    monkeypatch.setattr(golden, "open", full_open, raising=False)
    with pytest.raises(OSError, match="No space"):
        _write(tmp_path / "g.npz")
    assert list(tmp_path.iterdir()) == []
