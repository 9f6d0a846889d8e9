"""Ctrl-C is exit 130 at any moment, also while trtopt's modules load (issue 12, item 13).

Python's own handling of Ctrl-C during the first second (``import trtopt``) printed a
traceback and ended with -2; trtopt.interrupt covers that time when trtopt runs as a program,
and leaves a library import alone.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import QUICKSTART

PROGRAMS = {
    "python -m trtopt": [sys.executable, "-m", "trtopt"],
    "console script": [str(Path(sys.executable).parent / "trtopt")],
}


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("delay", [0.05, 0.1, 0.2, 0.3])
def test_ctrl_c_while_starting_is_exit_130_without_a_traceback(program, delay):
    if not Path(PROGRAMS[program][0]).exists():
        pytest.skip("the console script is not installed beside this interpreter")
    proc = subprocess.Popen(
        [*PROGRAMS[program], "validate", str(QUICKSTART)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(delay)
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    # Done before the signal: nothing to test on this machine at this delay. validate takes
    # about 0.2 s, so it may also finish between the poll and the signal (its verdict printed).
    if finished or (proc.returncode == 0 and b": ok (" in out and not err):
        assert proc.returncode == 0, err.decode()
        return
    if _before_trtopt(proc.returncode, err):
        return  # Python itself was still starting: its window, before any trtopt code runs
    assert proc.returncode == 130, (proc.returncode, err.decode())
    assert b"Traceback" not in err, err.decode()
    assert err.decode().strip() in ("", "interrupted"), err.decode()


def _before_trtopt(returncode: int, err: bytes) -> bool:
    """Whether SIGINT landed before trtopt's guard was installed (a loaded machine takes that
    long to get there): the process killed by the signal with nothing said (Python's own
    handler not installed yet), or a KeyboardInterrupt raised in Python's import machinery
    while it looked for the package or imported what the guard itself needs (`signal`)."""
    killed = returncode == -signal.SIGINT and not err.strip()
    frames = [line for line in err.decode().splitlines() if line.strip().startswith('File "')]
    ours = [frame for frame in frames if "/trtopt/" in frame]
    # After the guard, Ctrl-C is exit 130 with no traceback: a traceback whose trtopt frames
    # are the package's first import and the guard's own imports came before it.
    guarding = all("/trtopt/__init__.py" in f or "/trtopt/interrupt.py" in f for f in ours)
    return killed or (b"KeyboardInterrupt" in err and guarding)


def test_importing_trtopt_leaves_ctrl_c_alone():
    code = (
        "import signal, trtopt, trtopt.cli\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_verb_loading_its_modules_exits_at_once_on_ctrl_c(monkeypatch):
    """While the hallway's modules load (onnx's native import aborted the process on a
    KeyboardInterrupt: exit -6), SIGINT exits 130 at once in a program, and Python's own handler
    is back after; a library's import is left alone."""
    from trtopt import interrupt

    with interrupt.exit_at_once():  # as a library: nothing changes
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(interrupt, "_program", True)
    with interrupt.exit_at_once():
        handler = signal.getsignal(signal.SIGINT)
    assert handler is not signal.default_int_handler and callable(handler)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    code = (
        "import os, signal, sys, trtopt.interrupt as i\n"
        "i._program = True\n"
        "with i.exit_at_once():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    import time; time.sleep(5)\n"
        "sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == 130 and done.stderr.decode().strip() == "interrupted"
