"""Progress of long work (calibration, the automatic search, latency runs): tqdm's bar on a
terminal, one line every few seconds where stderr is not one (CI logs), nothing when quiet."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

LOG_INTERVAL_S = float(os.environ.get("TRTOPT_PROGRESS_SECONDS", "5"))
"""Seconds between progress lines in a log (no terminal), and before the first: work that
ends sooner prints nothing. $TRTOPT_PROGRESS_SECONDS sets it."""

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) every progress bar and line: ``--quiet``."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


@cache
def _log_lines() -> type:
    """tqdm, imported when a bar is first shown (the command line starts without it), and its
    subclass that writes its status line as whole lines (no carriage returns) for logs."""
    from tqdm import tqdm

    class LogLines(tqdm):
        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            self.fp.write((msg or self.__str__()) + "\n")
            self.fp.flush()
            return True

    return LogLines


@contextmanager
def bar(description: str, total: int | None = None, unit: str = "it") -> Iterator[Any]:
    """A progress bar for ``total`` steps; call ``.update(n)`` on what it yields."""
    stream = sys.stderr
    log_lines = _log_lines()
    tqdm = log_lines.__base__
    if _quiet:
        with tqdm(total=total, disable=True) as disabled:
            yield disabled
        return
    terminal = stream.isatty()
    kind = tqdm if terminal else log_lines
    interval = 0.1 if terminal else LOG_INTERVAL_S
    with kind(
        total=total,
        desc=description,
        unit=unit,
        file=stream,
        mininterval=interval,
        maxinterval=max(interval, 10.0),
        ascii=not terminal,
        dynamic_ncols=terminal,
        # Work that ends sooner shows nothing (a quick compile's log stays clean).
        delay=interval if terminal else LOG_INTERVAL_S,
    ) as shown:
        yield shown
