"""The keys of one compile in the stage cache: a chain of pass keys from the source model's
files, each pass's options and code, and the data a pass read (only where it read any), then
the compile key."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cache import StageCache, code_digest, environment
from .digests import digest, file_digest
from .passes.base import PassContext


def feeds_digest(feeds: Iterable[Mapping[str, np.ndarray]]) -> str:
    """Hash of input feeds' names, dtypes, shapes and bytes."""
    hasher = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            hasher.update(repr((name, str(array.dtype), array.shape)).encode())
            hasher.update(array.tobytes())
    return hasher.hexdigest()


def source_digest(model_files: Sequence[Path], inputs: Any) -> str:
    """Key of the graph a compile starts from: the model's files and the declared inputs."""
    hasher = hashlib.sha256()
    for path in model_files:
        hasher.update(file_digest(path).encode())
    return digest("source", hasher.hexdigest(), inputs)


class WatchedContext(PassContext):
    """A PassContext that notes whether a pass read any data (calibration, validation or
    check feeds): only then does that data's hash join the pass's key."""

    _DATA_FIELDS = frozenset({"feeds", "calibration", "validation"})
    data_read: bool = False

    def __getattribute__(self, name: str) -> Any:
        if name in WatchedContext._DATA_FIELDS:
            object.__setattr__(self, "data_read", True)
        return super().__getattribute__(name)


class CacheKeys:
    """The keys of one compile: a chain of pass keys, then the compile key.

    ``data_digest`` is called at most once, and only when a pass is known to read data.
    """

    def __init__(self, cache: StageCache, source: str, data_digest: Callable[[], str]) -> None:
        self.cache = cache
        self.previous = source
        self._data_digest = data_digest
        self._data: str | None = None
        self.hits = 0

    def data(self) -> str:
        if self._data is None:
            self._data = self._data_digest()
        return self._data

    def base_key(self, pass_: Any) -> str:
        options = pass_.options.model_dump(mode="json")
        return digest(
            "pass", self.previous, pass_.name, options, code_digest(type(pass_)), environment()
        )

    def pass_key(self, pass_: Any) -> tuple[str, str]:
        """(base key, full key) of the next pass; the full key adds the data's hash when an
        earlier run of this very step found that it reads data."""
        base = self.base_key(pass_)
        full = digest(base, "data", self.data()) if self.cache.reads_data(base) else base
        return base, full

    def advance(self, key: str) -> None:
        self.previous = key

    def probe(self, passes: Sequence[Any], settings: Any) -> str:
        """The compile key that the chain would reach if every pass's key is as recorded."""
        start = self.previous
        try:
            for pass_ in passes:
                self.previous = self.pass_key(pass_)[1]
            return self.compile_key(settings)
        finally:
            self.previous = start

    def compile_key(self, settings: Any) -> str:
        return digest("compile", self.previous, settings, environment())
