"""Range caches: trtopt's JSON cache and TensorRT's calibration cache format.

The JSON cache is keyed by the model's hash, the data's hash and the calibrator settings, so
a second compile with the same three skips calibration; anything else misses. It lives in
the :data:`RANGES_FOLDER` of the stage cache's root, which the compile names for the
duration of its passes (:func:`ranges_cache`): ``--no-cache``, ``--cache-dir`` and
``$TRTOPT_CACHE_DIR`` govern both, and ``trtopt cache info|prune`` see both. Outside a
compile nothing is cached unless the caller names a folder. The TensorRT calibration cache
(``name: hex`` lines) serves users of TensorRT 10's implicit INT8.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from .. import jsontext

CACHE_VERSION = 1
RANGES_FOLDER = "ranges-v1"
"""Folder under the cache root holding the range files."""
TMP_PREFIX = ".ranges-"
"""Prefix of a range file being written (``.ranges-<host>-<pid>-...``)."""
TRT_CACHE_HEADER = "TRT-8601-EntropyCalibration2"
"""First line of the TensorRT calibration cache (TensorRT 8.6+ reads it for any calibrator)."""
INT8_MAX = 127.0


_FOLDER: ContextVar[Path | None] = ContextVar("trtopt_ranges_folder", default=None)


@contextlib.contextmanager
def ranges_cache(folder: Path | None) -> Iterator[None]:
    """Within the block, calibration caches ranges in ``folder`` (None: not at all)."""
    token = _FOLDER.set(folder)
    try:
        yield
    finally:
        _FOLDER.reset(token)


def current_folder() -> Path | None:
    """The range cache folder the enclosing compile named, or None (no caching)."""
    return _FOLDER.get()


def cache_key(model_sha256: str, data_sha256: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "model_sha256": model_sha256,
        "data_sha256": data_sha256,
        "settings": settings,
    }


def cache_path(key: dict[str, Any], folder: Path) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return folder / f"{digest[:32]}.json"


def read_ranges(path: Path) -> tuple[Any, dict[str, float]] | None:
    """(key, ranges) of a range file, or None where it is unreadable or malformed."""
    try:
        content = json.loads(path.read_text())
        ranges = content["ranges"]
        return content["key"], {str(k): float(v) for k, v in ranges.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def load_ranges(key: dict[str, Any], folder: Path) -> dict[str, float] | None:
    """The cached ranges for ``key``, or None (missing, unreadable or another key)."""
    path = cache_path(key, folder)
    found = read_ranges(path)
    if found is None or found[0] != key:
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recency, for prune --max-size
    return found[1]


def save_ranges(key: dict[str, Any], ranges: dict[str, float], folder: Path) -> Path | None:
    """Write the cache atomically (a concurrent compile reads the old file or the new one).
    A cache that cannot be written never fails the calibration: None then."""
    path = cache_path(key, folder)
    text = jsontext.dumps({"key": key, "ranges": dict(sorted(ranges.items()))}, indent=1)
    prefix = f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        try:
            with os.fdopen(handle, "w") as stream:
                stream.write(text + "\n")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        return None
    return path


def tensorrt_cache(ranges: dict[str, float]) -> str:
    """TensorRT's calibration cache text: per tensor, its scale (amax / 127) as the
    big-endian IEEE-754 float32 bits in hex, which is how TensorRT writes and reads it."""
    lines = [TRT_CACHE_HEADER]
    for name, amax in sorted(ranges.items()):
        scale = float(amax) / INT8_MAX if amax > 0 else 1.0 / INT8_MAX
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def read_tensorrt_cache(text: str) -> dict[str, float]:
    """Ranges (amax) from a TensorRT calibration cache."""
    ranges = {}
    for line in text.splitlines()[1:]:
        name, sep, value = line.rpartition(": ")
        if sep:
            ranges[name] = struct.unpack(">f", bytes.fromhex(value.strip()))[0] * INT8_MAX
    return ranges
