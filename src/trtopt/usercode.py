"""User code (plugin files, plugin passes) runs inside trtopt's process: it is
imported without writing into the user's folder, and must never end trtopt with a code of its
own: ``sys.exit`` raises SystemExit, which the callers catch; ``os._exit`` would end the process
at once (0 being a success no report backs), so while user code runs it raises instead. A
process forked meanwhile (multiprocessing) keeps the real one."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType


def import_file(module_name: str, path: str | Path) -> ModuleType:
    """Import the user's Python file ``path`` as ``module_name``, registered in
    ``sys.modules`` before it runs as an import does (the caller removes it when this raises).
    No bytecode is written, for it or what it imports: Python would leave a ``__pycache__``
    folder beside the user's files, and trtopt writes only where it is told to."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError("not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes
    return module


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
