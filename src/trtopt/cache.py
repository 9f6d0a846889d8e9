"""The stage cache: content-addressed pass outputs and compile results, safe to share.

A key (cache_keys.py makes them) is a sha256 over everything that decides a result: the
input graph, the pass's name and canonical options, the content of the data it read (only
where it read any), trtopt's own source code and the versions of the libraries that compute
(:func:`environment`). Standard library only: a compile served from the cache reads it
without loading ONNX or NumPy.

An entry is a folder written under ``tmp/``, every file fsynced, its manifest (file sizes and
sha256) written last, then renamed into ``entries/`` in one step: a reader sees a complete
entry or none, and a writer killed at any moment leaves only a ``tmp/`` leftover that
``prune`` removes. Two compiles writing the same key race harmlessly (the second rename
fails and its copy is dropped, the content being the same). Readers verify every file's size
and hash, so a damaged entry is a miss, never a wrong result. Pruning renames an entry out of
``entries/`` before deleting it, so no lock is needed: a reader that loses the race misses.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from . import jsontext
from ._version import installed
from .calibration.cache import RANGES_FOLDER, TMP_PREFIX, read_ranges
from .digests import digest, file_digest
from .errors import UserError
from .staging import alive, owner, remove, remove_dead_scratch

log = logging.getLogger("trtopt.cache")

CACHE_ENV = "TRTOPT_CACHE_DIR"
"""Environment variable naming the cache root (shared with the calibration range cache)."""
LAYOUT = "stages-v1"
"""Folder under the cache root holding this layout's entries; a new layout gets a new name."""
MANIFEST = "manifest.json"
LEFTOVER_AGE_S = 24 * 3600
"""A ``tmp/`` leftover from another host is removed by prune only when older than this."""
_COMPUTING_PACKAGES = ("onnx", "onnxruntime", "onnx-graphsurgeon", "polygraphy", "numpy")
REQUIRED_META = {
    "pass": ("record", "histogram", "artifacts", "warnings"),
    "compile": ("report",),
    "direct": ("candidates",),
}
"""What the pipeline reads from an entry's ``meta``, by kind: an entry without it is damaged."""


class CacheError(UserError):
    """The cache folder cannot be used (e.g. it is a file, or not writable)."""


def default_cache_dir() -> Path:
    """``$TRTOPT_CACHE_DIR``, else the platform's user cache folder (what platformdirs gives:
    XDG on Linux, ~/Library/Caches on macOS, %LOCALAPPDATA% on Windows), written out here
    because six lines do not justify a dependency."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "trtopt" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "trtopt"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trtopt"


def resolve_cache_dir(cli_dir: str | Path | None = None, recipe_dir: str | None = None) -> Path:
    """The cache root by precedence: ``--cache-dir``, then ``$TRTOPT_CACHE_DIR``, then the
    recipe's ``cache.dir``, then the platform default."""
    if cli_dir is not None:
        return Path(cli_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if recipe_dir is not None:
        return Path(recipe_dir)
    return default_cache_dir()


# -- keys ----------------------------------------------------------------------------------


@cache
def _package_sources() -> str:
    """Hash of trtopt's own source files: a code change invalidates every entry even when the
    version number stays the same (a development install)."""
    root = Path(__file__).resolve().parent
    hasher = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        hasher.update(str(path.relative_to(root)).encode())
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


@cache
def environment() -> dict[str, str | None]:
    """What besides the inputs decides a result: trtopt's code, the computing libraries'
    versions, Python and the machine architecture."""
    found: dict[str, str | None] = {
        "trtopt-sources": _package_sources(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    return found | {package: installed(package) for package in ("trtopt", *_COMPUTING_PACKAGES)}


def code_digest(cls: type) -> str:
    """Hash of the code of a pass that lives outside trtopt (a plugin): its file and every
    file it imports from its own folder (:func:`plugin_files`); built-in passes are covered
    by :func:`environment`."""
    module = sys.modules.get(cls.__module__)
    source = getattr(module, "__file__", None)
    if source is None:
        return f"{cls.__module__}.{cls.__qualname__}"
    path = Path(source).resolve()
    if path.is_relative_to(Path(__file__).resolve().parent):
        return "builtin"
    if not path.is_file():
        return str(path)
    files = plugin_files(path)
    return digest({str(f.relative_to(path.parent)): file_digest(f) for f in files})


def plugin_files(path: Path) -> list[Path]:
    """A plugin file and the files it imports from its folder tree, transitively: what
    ``import x``, ``from x import y`` and ``from . import y`` name that is a module (``.py``
    or a package's ``__init__.py``) under the plugin's folder. Read with ``ast``, never run;
    a file that does not parse counts with its bytes alone."""
    root = path.resolve().parent
    found = [path.resolve()]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        for module in _imported_modules(current, root):
            if module not in found:
                found.append(module)
    return found


def _imported_modules(path: Path, root: Path) -> Iterator[Path]:
    """The files under ``root`` that the imports in ``path`` may load."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _module_files(root, alias.name.split("."), root)
        elif isinstance(node, ast.ImportFrom):
            base = root
            if node.level:  # relative to the importing file's package
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
            parts = node.module.split(".") if node.module else []
            yield from _module_files(base, parts, root)
            for alias in node.names:  # `from pkg import module`
                if alias.name != "*":
                    yield from _module_files(base, [*parts, alias.name], root)


def _module_files(base: Path, parts: Sequence[str], root: Path) -> Iterator[Path]:
    """The files importing ``parts`` (a dotted name) from ``base`` runs, as far as they lie
    under ``root``: each package's ``__init__.py`` on the way and the module itself."""
    folder = base
    for i, part in enumerate(parts):
        candidates = [folder / part / "__init__.py"]
        if i == len(parts) - 1:
            candidates.append(folder / f"{part}.py")
        for candidate in candidates:
            resolved = candidate.resolve()
            if resolved.is_file() and resolved.is_relative_to(root):
                yield resolved
        folder = folder / part


# -- entries -------------------------------------------------------------------------------


@dataclass
class Entry:
    """A complete, verified cache entry."""

    path: Path
    manifest: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest["meta"]

    def file(self, name: str) -> Path:
        return self.path / "files" / name

    def files(self) -> list[str]:
        return sorted(self.manifest["files"])

    def restore(self, names: Iterable[str], into: Path) -> None:
        """Copy files out of the entry (copies, so that editing an output never edits the
        cache). Only the entry's own plain file names: a name such as ``../x`` in a shared
        cache would otherwise write outside ``into`` (``get`` already refuses such entries)."""
        names = list(names)
        for name in names:
            if not plain_name(name) or name not in self.manifest["files"]:
                raise CacheError(f"damaged cache entry: cannot restore {name!r}", str(self.path))
        into.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(self.file(name), into / name)


def plain_name(name: object) -> bool:
    """A file name with no folder part on any system: not empty, no separators, no ``..``,
    no NUL, no drive."""
    if not isinstance(name, str) or name in ("", ".", "..") or "\0" in name:
        return False
    return PurePosixPath(name).name == name and PureWindowsPath(name).name == name


def damage(manifest: object, key: str | None = None) -> str | None:
    """Why a manifest cannot be trusted (None: it can). Anything the pipeline would read
    from it is checked here, so a damaged entry is a miss, never a crash or a stray write."""
    if not isinstance(manifest, dict):
        return "the manifest is not a mapping"
    if key is not None and manifest.get("key") != key:
        return "the manifest names another key"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "no file list"
    for name, value in files.items():
        if not plain_name(name):
            return f"the file name {name!r} is not a plain file name"
        if not (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], int)
            and isinstance(value[1], str)
        ):
            return f"the file {name!r} has no size and hash"
    meta = manifest.get("meta")
    if not isinstance(meta, dict):
        return "no meta"
    missing = [k for k in REQUIRED_META.get(manifest.get("kind"), ()) if k not in meta]
    if missing:
        return f"meta lacks {missing}"
    artifacts = meta.get("artifacts", [])
    if not isinstance(artifacts, list) or any(a not in files for a in artifacts):
        return "meta names artifacts the entry does not hold"
    return None


def read_manifest(path: Path) -> dict[str, Any] | None:
    """An entry folder's manifest, or None where it is unreadable or damaged."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if damage(manifest) is None else None


@dataclass
class CacheInfo:
    root: Path
    entries: int
    bytes: int
    by_kind: dict[str, int]
    leftovers: int
    other_bytes: int
    """Bytes under the root that are neither stage entries nor calibration range files."""

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "entries": self.entries,
            "bytes": self.bytes,
            "by_kind": self.by_kind,
            "leftovers": self.leftovers,
            "other_bytes": self.other_bytes,
        }


@dataclass
class PruneResult:
    removed: int = 0
    freed: int = 0
    leftovers: int = 0
    kept: int = 0
    kept_bytes: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class StageCache:
    """A cache folder; every method is safe to call from concurrent processes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.base = self.root / LAYOUT
        self.entries = self.base / "entries"
        self.tmp = self.base / "tmp"
        self.markers = self.base / "reads-data"
        self.ranges = self.root / RANGES_FOLDER
        """The calibration range files (trtopt.calibration.ranges_cache), pruned alike."""

    def _entry_dir(self, key: str) -> Path:
        return self.entries / key[:2] / key

    def _ensure(self) -> None:
        try:
            for folder in (self.entries, self.tmp, self.markers):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CacheError(f"cannot use the cache folder: {error}", str(self.root)) from None

    # reading

    def get(self, key: str) -> Entry | None:
        """The complete entry for ``key``, verified file by file, or None."""
        path = self._entry_dir(key)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            why = damage(manifest, key)
            if why is not None:
                log.warning("cache entry %s is damaged (%s); ignoring it", key[:16], why)
                return None
            for name, (size, sha) in manifest["files"].items():
                file = path / "files" / name
                if file.stat().st_size != size or file_digest(file) != sha:
                    log.warning("cache entry %s is damaged (%s); ignoring it", key[:16], name)
                    return None
            os.utime(path / MANIFEST)  # recency, for prune --max-size
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return Entry(path, manifest)

    def reads_data(self, key: str) -> bool:
        return (self.markers / key).exists()

    def mark_reads_data(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self._ensure()
            (self.markers / key).touch()

    # writing

    @contextlib.contextmanager
    def writer(self, key: str, kind: str, replace: bool = False) -> Iterator[_Writer]:
        """Write an entry: put files into ``writer.folder``, set ``writer.meta``; it becomes
        visible atomically when the block ends without an error. Failing to write a cache
        entry never fails the compile: it is logged and dropped. An entry is a function of
        its key, so the first one published stays; ``replace`` (an entry that gathers what
        was learned under one key) puts this one in its place."""
        name, publish = owner(), True
        try:
            self._ensure()
            folder = Path(tempfile.mkdtemp(prefix=name, dir=self.tmp))
        except (OSError, CacheError) as error:
            log.warning("cache %s is not writable (%s); not caching", self.root, error)
            folder, publish = Path(tempfile.mkdtemp(prefix="trtopt-uncached-")), False
        writer = _Writer(folder / "files", kind)
        writer.folder.mkdir()
        try:
            yield writer
            if publish:
                self._publish(key, folder, writer, replace)
        except OSError as error:
            log.warning("could not write cache entry %s: %s", key[:16], error)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _publish(self, key: str, folder: Path, writer: _Writer, replace: bool) -> None:
        try:
            files = {}
            for file in sorted(writer.folder.iterdir()):
                with open(file, "rb+") as handle:
                    os.fsync(handle.fileno())
                files[file.name] = (file.stat().st_size, file_digest(file))
            manifest = {
                "key": key,
                "kind": writer.kind,
                "created": time.time(),
                "environment": environment(),
                "files": files,
                "meta": writer.meta,
            }
            with open(folder / MANIFEST, "w") as handle:
                handle.write(jsontext.dumps(manifest, indent=1, default=str))
                handle.flush()
                os.fsync(handle.fileno())
            _fsync_dir(writer.folder)
            _fsync_dir(folder)
            target = self._entry_dir(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(folder, target)
            except OSError:
                if not target.exists():
                    raise
                if read_manifest(target) is not None and not replace:
                    return  # another compile published the same key first
                # A damaged entry under this key would stay a miss forever: replace it.
                self._remove(target, 0, PruneResult(), "replaced")
                os.rename(folder, target)
            _fsync_dir(target.parent)
        except OSError as error:
            log.warning("could not write cache entry %s: %s", key[:16], error)

    # maintenance

    def _iter_entries(self) -> Iterator[Path]:
        if not self.entries.is_dir():
            return
        for shard in sorted(self.entries.iterdir()):
            if shard.is_dir():
                yield from sorted(p for p in shard.iterdir() if p.is_dir())

    def _iter_ranges(self) -> Iterator[tuple[Path, bool]]:
        """(range file, readable) for every complete range file."""
        if not self.ranges.is_dir():
            return
        for path in sorted(self.ranges.iterdir()):
            if path.is_file() and not path.name.startswith(TMP_PREFIX):
                yield path, read_ranges(path) is not None

    def _range_leftovers(self) -> list[Path]:
        if not self.ranges.is_dir():
            return []
        return sorted(p for p in self.ranges.iterdir() if p.name.startswith(TMP_PREFIX))

    def info(self) -> CacheInfo:
        entries, total, by_kind = 0, 0, {}
        for path in self._iter_entries():
            size = _dir_bytes(path)
            manifest = read_manifest(path)
            kind = str(manifest.get("kind", "?")) if manifest is not None else "damaged"
            entries += 1
            total += size
            by_kind[kind] = by_kind.get(kind, 0) + 1
        for path, readable in self._iter_ranges():
            kind = "ranges" if readable else "damaged"
            entries += 1
            with contextlib.suppress(OSError):
                total += path.stat().st_size
            by_kind[kind] = by_kind.get(kind, 0) + 1
        leftovers = len(list(self.tmp.iterdir())) if self.tmp.is_dir() else 0
        leftovers += len(self._range_leftovers())
        everything = _dir_bytes(self.root) if self.root.is_dir() else 0
        return CacheInfo(
            self.root, entries, total, dict(sorted(by_kind.items())), leftovers, everything - total
        )

    def prune(self, max_size: int | None = None) -> PruneResult:
        """Remove leftovers of interrupted writes, entries that can never hit again (another
        trtopt code or library version, damaged), then, with ``max_size``, the least recently
        used entries until the rest fits."""
        result = PruneResult()
        if not self.base.is_dir() and not self.ranges.is_dir():
            return result
        self._ensure()
        result.leftovers = self._remove_leftovers()
        current = environment()
        alive: list[tuple[float, int, Path]] = []
        for path in self._iter_entries():
            manifest = read_manifest(path)
            try:
                used = (path / MANIFEST).stat().st_mtime
            except OSError:
                used = 0.0
            size = _dir_bytes(path)
            if manifest is None:
                self._remove(path, size, result, "damaged or incomplete")
            elif manifest.get("environment") != current:
                self._remove(path, size, result, "other version")
            else:
                alive.append((used, size, path))
        for path, readable in self._iter_ranges():
            try:
                stat = path.stat()
            except OSError:
                continue
            if readable:
                alive.append((stat.st_mtime, stat.st_size, path))
            else:
                self._remove(path, stat.st_size, result, "damaged or incomplete")
        total = sum(size for _, size, _ in alive)
        for _, size, path in sorted(alive, key=lambda item: item[0]):
            if max_size is None or total <= max_size:
                result.kept += 1
                result.kept_bytes += size
                continue
            self._remove(path, size, result, "least recently used")
            total -= size
        return result

    def _remove(self, path: Path, size: int, result: PruneResult, reason: str) -> None:
        # Out of entries/ in one rename first: no reader ever sees a half-deleted entry.
        trash = Path(tempfile.mkdtemp(prefix="trash-", dir=self.tmp))
        try:
            os.rename(path, trash / path.name)
        except OSError:  # another prune took it
            shutil.rmtree(trash, ignore_errors=True)
            return
        shutil.rmtree(trash, ignore_errors=True)
        result.removed += 1
        result.freed += size
        result.reasons[reason] = result.reasons.get(reason, 0) + 1

    def _remove_leftovers(self) -> int:
        removed, host, now = 0, socket.gethostname(), time.time()
        for path in [*self.tmp.iterdir(), *self._range_leftovers()]:
            name = path.name.removeprefix(TMP_PREFIX)
            owner_host, _, rest = name.rpartition("-")[0].rpartition("-")
            pid = int(rest) if rest.isdigit() else None
            try:
                old = now - path.stat().st_mtime > LEFTOVER_AGE_S
            except OSError:
                continue
            dead = owner_host == host and pid is not None and not alive(pid)
            if path.name.startswith("trash-") or dead or old:
                remove(path)
                removed += 1
        return removed


@dataclass
class _Writer:
    folder: Path
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)


# -- what a pass wrote --------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Name -> (size, mtime) of the files in a folder, to see what a pass wrote there."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        if path.is_file():
            stat = path.stat()
            found[path.name] = (stat.st_size, stat.st_mtime_ns)
    return found


def written(before: dict[str, tuple[int, int]], folder: Path) -> list[str]:
    after = snapshot(folder)
    return sorted(name for name, state in after.items() if before.get(name) != state)


__all__ = [
    "CACHE_ENV",
    "CacheError",
    "CacheInfo",
    "Entry",
    "PruneResult",
    "StageCache",
    "cache_info",
    "default_cache_dir",
    "prune_cache",
    "resolve_cache_dir",
]


def cache_info(cache_dir: str | Path | None = None) -> CacheInfo:
    """Entries, sizes and leftovers of the stage cache (default folder: see
    :func:`resolve_cache_dir`)."""
    return StageCache(resolve_cache_dir(cache_dir)).info()


def prune_cache(cache_dir: str | Path | None = None, max_size: int | None = None) -> PruneResult:
    """Prune the stage cache (see :meth:`StageCache.prune`); the scratch folders that killed
    trtopt processes left in the system's temporary folder count as its leftovers."""
    result = StageCache(resolve_cache_dir(cache_dir)).prune(max_size)
    result.leftovers += remove_dead_scratch()
    return result
