"""Ctrl-C ends the trtopt program with exit code 130 at any moment, its first second included.

``python -m trtopt`` and the ``trtopt`` console script import the package (about a second of
modules) before any code of trtopt's can catch KeyboardInterrupt, so Ctrl-C then printed a
traceback and ended with -2. The package imports this module first: when trtopt runs as a
program (never when a library imports it), SIGINT ends it quietly with 130 until the CLI's
own handling takes over (:func:`startup_done`, first thing in ``trtopt.cli.main``).
"""

from __future__ import annotations

import os
import signal
import sys
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


def guard_startup() -> None:
    """While trtopt starts as a program, SIGINT exits 130 (Python's default: a traceback)."""
    if _as_program() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted)


def startup_done() -> None:
    """Ctrl-C raises KeyboardInterrupt again, for the CLI to clean up and exit 130 itself."""
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


guard_startup()
