"""Output folders that change all at once: a compile writes into a staging folder beside the
output and swaps it in only when it has finished, so a failed or killed compile leaves the
previous output intact."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path


def _owner() -> str:
    """Host and process id in a temporary folder's name: a later compile can tell a leftover
    of a killed process from the work of a running one."""
    return f"{socket.gethostname()}-{os.getpid()}-"


def stage(output_dir: Path) -> Path:
    """A fresh folder beside the output, on the same filesystem, so the final move is a rename.

    Leftovers of compiles killed earlier (SIGKILL runs no cleanup) are removed first, and an
    output stranded mid-swap by such a kill is put back.
    """
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _recover(output_dir)
    prefix = f".{output_dir.name}.staging-{_owner()}"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=output_dir.parent))


def _recover(output_dir: Path) -> None:
    pattern = re.compile(rf"^\.{re.escape(output_dir.name)}\.(staging|old)-(.+)-(\d+)-[^-]+$")
    host = socket.gethostname()
    for path in sorted(output_dir.parent.iterdir()):
        match = pattern.match(path.name)
        if not match or match.group(2) != host or _alive(int(match.group(3))):
            continue
        stranded = path / output_dir.name
        if match.group(1) == "old" and stranded.is_dir() and not output_dir.exists():
            os.rename(stranded, output_dir)
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


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
    renamed aside first and a later compile puts it back if a kill strands it there."""
    if output_dir.is_dir() and _exchange(staging, output_dir):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous output
        return
    backup = None
    if output_dir.exists():
        prefix = f".{output_dir.name}.old-{_owner()}"
        backup = Path(tempfile.mkdtemp(prefix=prefix, dir=output_dir.parent))
        os.rename(output_dir, backup / output_dir.name)
    os.rename(staging, output_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
