"""Output folders that change all at once, and only folders trtopt owns.

A compile writes into a staging folder beside the output and swaps it in only when it has
finished, so a failed or killed compile leaves the previous output intact. Every folder
trtopt writes carries a marker file (:data:`MARKER`); an existing output is replaced only
when it carries that mark or is empty (``force`` also allows another non-empty folder),
never when it is a file or a symlink, or holds any of the compile's own inputs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import UserError

MARKER = ".trtopt-output"
"""File inside every output folder trtopt writes: a later compile may replace that folder."""
MARKER_TEXT = (
    "This folder was written by trtopt; `trtopt compile` replaces it whole.\n"
    "Delete this file to keep trtopt from ever replacing the folder.\n"
)


class OutputError(UserError):
    """The output path names something trtopt must not replace."""


def check_output(output_dir: Path, inputs: Iterable[Path] = (), force: bool = False) -> None:
    """Refuse an output path whose replacement could destroy what trtopt did not write.

    ``output_dir`` as the user gave it (not resolved: a symlink is refused, not followed).
    ``inputs``: files and folders the compile reads (recipe, model, data, golden files, the
    cache folder); the output may be none of them and hold none of them. ``force`` allows
    replacing a non-empty folder without :data:`MARKER`, and nothing else.
    """
    where = os.path.abspath(output_dir)
    if output_dir.is_symlink():
        raise OutputError("the output is a symlink; name the real folder", where)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError("the output is a file, not a folder; trtopt never replaces a file", where)
    refuse_inputs(output_dir, inputs)
    if not output_dir.is_dir() or force or (output_dir / MARKER).is_file():
        return
    if any(output_dir.iterdir()):
        raise OutputError(
            f"the output folder exists and was not written by trtopt (no {MARKER}); "
            "choose another folder, empty it, or pass --force to replace it",
            where,
        )


def refuse_inputs(output_dir: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output folder that is, or holds, one of ``inputs``."""
    resolved = output_dir.resolve()
    for path in inputs:
        path = Path(path).resolve()
        if path == resolved or resolved in path.parents:
            raise OutputError(
                f"the output folder holds an input of this compile ({path}); "
                "replacing the folder would delete it",
                os.path.abspath(output_dir),
            )


def _umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def owner() -> str:
    """Host and process id in a temporary file's or folder's name: a later run can tell a
    leftover of a killed process from the work of a running one (:func:`remove_dead`)."""
    return f"{socket.gethostname()}-{os.getpid()}-"


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists
        return True
    return True


def remove_dead(folder: Path, prefix: str) -> int:
    """Remove what processes of this host that are gone left in ``folder``: files and folders
    named ``prefix`` (a regular expression), then :func:`owner`, then a random tail. SIGKILL
    runs no cleanup; this is the next run's. Returns how many were removed."""
    pattern = re.compile(rf"^{prefix}{re.escape(socket.gethostname())}-(\d+)-[^-/]*$")
    removed = 0
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return 0
    for name in names:
        match = pattern.match(name)
        if not match or alive(int(match.group(1))):
            continue
        remove(folder / name)
        removed += 1
    return removed


def remove(path: Path) -> None:
    """Delete a leftover file or folder (a link itself, never what it points to), quietly:
    another process may be removing it too."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


SCRATCH_PREFIX = "trtopt-"
"""Scratch folders in the system's temporary folder: ``trtopt-<kind>-<owner>XXXXXXXX``."""


@contextlib.contextmanager
def scratch(kind: str) -> Iterator[Path]:
    """A private scratch folder in the system's temporary folder, removed when the block ends.

    Named with its :func:`owner`, so the scratch folders of killed processes (of any kind) are
    removed by the next process that makes one, and by :func:`remove_dead_scratch`."""
    _sweep_once()
    prefix = f"{SCRATCH_PREFIX}{kind}-{owner()}"
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


@functools.cache
def _sweep_once() -> None:
    """Once a process: listing the system's temporary folder for each scratch folder cost
    more than a small model's passes (0.8 ms of optimize's 1.6 ms)."""
    remove_dead_scratch()


def remove_dead_scratch() -> int:
    """Remove the :func:`scratch` folders that killed processes of this host left behind."""
    return remove_dead(Path(tempfile.gettempdir()), rf"{re.escape(SCRATCH_PREFIX)}[a-z]+-")


def stage(output_dir: Path) -> Path:
    """A fresh folder beside the output, on the same filesystem, so the final move is a rename.

    Leftovers of compiles killed earlier (SIGKILL runs no cleanup) are removed first, and an
    output stranded mid-swap by such a kill is put back.
    """
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _recover(output_dir)
    prefix = f".{output_dir.name}.staging-{owner()}"
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=output_dir.parent))
    # mkdtemp makes 0700 folders; an output folder gets the permissions the user's umask gives.
    os.chmod(staging, 0o777 & ~_umask())
    (staging / MARKER).write_text(MARKER_TEXT)
    return staging


def _recover(output_dir: Path) -> None:
    pattern = re.compile(rf"^\.{re.escape(output_dir.name)}\.(staging|old)-(.+)-(\d+)-[^-]+$")
    host = socket.gethostname()
    for path in sorted(output_dir.parent.iterdir()):
        match = pattern.match(path.name)
        if not match or match.group(2) != host or alive(int(match.group(3))):
            continue
        stranded = path / output_dir.name
        if match.group(1) == "old" and stranded.is_dir() and not output_dir.exists():
            os.rename(stranded, output_dir)
        shutil.rmtree(path, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2 RENAME_EXCHANGE, which the
    standard library does not expose); False where the system or filesystem cannot."""
    if sys.platform != "linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def commit(staging: Path, output_dir: Path) -> None:
    """Replace ``output_dir`` by ``staging``. Where the system can, both swap in one atomic
    step, so a kill at any moment leaves the old or the new output; elsewhere the old one is
    renamed aside first and a later compile puts it back if a kill strands it there.

    Whether the output may be replaced at all is :func:`check_output`'s question; a file or a
    symlink is refused here too, whoever calls."""
    if output_dir.is_symlink() or (output_dir.exists() and not output_dir.is_dir()):
        raise OutputError("not a folder trtopt can replace (a file or a symlink)", str(output_dir))
    if output_dir.is_dir() and _exchange(staging, output_dir):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous output
        return
    backup = None
    if output_dir.exists():
        prefix = f".{output_dir.name}.old-{owner()}"
        backup = Path(tempfile.mkdtemp(prefix=prefix, dir=output_dir.parent))
        os.rename(output_dir, backup / output_dir.name)
    os.rename(staging, output_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
