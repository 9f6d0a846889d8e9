"""User code (plugin files, plugin passes) runs inside trtopt's process and must never end it
with a code of its own: ``sys.exit`` raises SystemExit, which the callers catch; ``os._exit``
would end the process at once (0 being a success no report backs), so while user code runs it
raises instead. A process forked meanwhile (multiprocessing) keeps the real one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class ExitAttempt(BaseException):
    """User code called ``os._exit(code)``: a BaseException, so its ``except Exception``
    cannot swallow it."""

    def __init__(self, code: int) -> None:
        super().__init__(f"called os._exit({code!r})")
        self.code = code


@contextmanager
def no_exit() -> Iterator[None]:
    """``os._exit`` raises ExitAttempt in this process while the block runs."""
    real, me = os._exit, os.getpid()

    def refuse(code: int) -> None:
        if os.getpid() != me:  # a forked child ending as it should
            real(code)
        raise ExitAttempt(code)

    os._exit = refuse
    try:
        yield
    finally:
        os._exit = real
