"""Range caches: trtopt's JSON cache and TensorRT's calibration cache format.

The JSON cache is keyed by the model's hash, the data's hash and the calibrator settings, so
a second compile with the same three skips calibration; anything else misses. The TensorRT
calibration cache (``name: hex`` lines) serves users of TensorRT 10's implicit INT8.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

CACHE_VERSION = 1
CACHE_ENV = "TRTOPT_CACHE_DIR"
"""Environment variable naming the cache root; default ~/.cache/trtopt."""
TRT_CACHE_HEADER = "TRT-8601-EntropyCalibration2"
"""First line of the TensorRT calibration cache (TensorRT 8.6+ reads it for any calibrator)."""
INT8_MAX = 127.0


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "trtopt"


def cache_key(model_sha256: str, data_sha256: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "model_sha256": model_sha256,
        "data_sha256": data_sha256,
        "settings": settings,
    }


def cache_path(key: dict[str, Any], root: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return (root or cache_root()) / "ranges" / f"{digest[:32]}.json"


def load_ranges(key: dict[str, Any], root: Path | None = None) -> dict[str, float] | None:
    """The cached ranges for ``key``, or None (missing, unreadable or another key)."""
    path = cache_path(key, root)
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("key") != key:
        return None
    ranges = content.get("ranges")
    if not isinstance(ranges, dict):
        return None
    return {str(k): float(v) for k, v in ranges.items()}


def save_ranges(key: dict[str, Any], ranges: dict[str, float], root: Path | None = None) -> Path:
    """Write the cache atomically (a concurrent compile reads the old file or the new one)."""
    path = cache_path(key, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"key": key, "ranges": dict(sorted(ranges.items()))}, indent=1)
    handle, tmp = tempfile.mkstemp(prefix=".ranges-", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        stream.write(text + "\n")
    os.replace(tmp, path)
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
