"""Ctrl-C ends the trtopt program with exit code 130 at any moment, its first second included.

``python -m trtopt`` and the ``trtopt`` console script import the package (about a second of
modules) before any code of trtopt's can catch KeyboardInterrupt, so Ctrl-C then printed a
traceback and ended with -2. The package imports this module first: when trtopt runs as a
program (never when a library imports it), SIGINT ends it quietly with 130 until the CLI's
own handling takes over (:func:`startup_done`, first thing in ``trtopt.cli.main``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_INTERRUPTED = 130
"""128 + SIGINT, as a shell reports a program Ctrl-C ended."""

_PROGRAM_NAMES = {"trtopt", "trtopt.exe", "trtopt-script.py"}


def _as_program() -> bool:
    argv0 = sys.argv[0] if sys.argv else ""
    # `python -m trtopt` sets argv[0] to "-m" while it imports the package holding __main__.
    return argv0 == "-m" or os.path.basename(argv0) in _PROGRAM_NAMES


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # Exit at once: an exception raised here could land inside a native module's import
    # (onnxruntime's turns it into "ImportError: initialization failed", exit 1), and
    # nothing has been written yet that needs cleaning up.
    print("interrupted", file=sys.stderr, flush=True)
    os._exit(EXIT_INTERRUPTED)


_program = False
"""Whether trtopt runs as a program (known at start-up only: runpy rewrites argv[0] after)."""


def guard_startup() -> None:
    """While trtopt starts as a program, SIGINT exits 130 (Python's default: a traceback)."""
    global _program
    _program = _as_program()
    if _program and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted)


@contextlib.contextmanager
def exit_at_once() -> Iterator[None]:
    """While a verb loads its heavy modules, SIGINT exits 130 at once, as during start-up: a
    KeyboardInterrupt raised inside a native module's import aborted the process (onnx:
    "terminate called after throwing an instance of 'nanobind::python_error'", exit -6). Only
    where trtopt runs as a program, on its main thread, with Python's own handler in place."""
    guarded = (
        _program
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if guarded:
        signal.signal(signal.SIGINT, _interrupted)
    try:
        yield
    finally:
        if guarded:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def startup_done() -> None:
    """Ctrl-C raises KeyboardInterrupt again, for the CLI to clean up and exit 130 itself."""
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


guard_startup()
