"""sha256 of files and of JSON values: what cache keys, reports and golden files are made of.
Standard library only, so a compile served from the cache hashes its inputs without loading
ONNX."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

HASH_CHUNK = 1 << 20
"""Bytes read at a time: large weights are hashed without sitting in memory."""


def digest(*parts: Any) -> str:
    """sha256 of JSON-canonical parts (sorted keys, no whitespace variance)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(*paths: Path) -> str:
    """One sha256 over the files in order, streamed."""
    hasher = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                hasher.update(chunk)
    return hasher.hexdigest()


_DIGESTS: dict[tuple[int, ...], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of one file, remembered while the same file (device, inode) keeps its size and
    modification time: a compile asks for its model's several times (cache key, report,
    golden), cache entries are checked on every read, and a large file takes seconds."""
    stat = path.stat()
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def digest_if_present(path: Path) -> str | None:
    """:func:`file_digest` of a file, None where there is none (a missing golden file)."""
    return file_digest(path) if path.is_file() else None


def files_digest(paths: list[Path]) -> str:
    """Hash of files in order: one file's own sha256, or the sha256 of their sha256s (a
    model and its external data files)."""
    if len(paths) == 1:
        return file_digest(paths[0])
    return hashlib.sha256("".join(file_digest(f) for f in paths).encode()).hexdigest()
