"""Data sources: where calibration, validation and check inputs come from.

A source is declared in a recipe (``data.calibration``, ``data.validation``, ``check.data``)
as exactly one of:

- ``npz``: a path or glob of ``.npz`` files; each file is one feed, arrays keyed by input
  name with a leading batch dim;
- ``npy``: a folder (or glob of folders) holding ``<input>.npy`` per model input; the arrays
  are memory-mapped and cut into feeds of ``batch`` rows along the leading axis;
- ``images``: a folder of images and its declared preprocessing (resize, crop, scale,
  mean/std, layout, dtype), for one image input;
- ``script``: a Python file whose ``load_data()`` yields feed dicts (Polygraphy's
  data-loader convention);
- ``synthetic``: random values (Polygraphy's DataLoader). Never representative for
  calibration: reports carry a warning.

A source yields feeds lazily (``DataSet.feeds()``), so calibration streams over data sets that
do not fit in memory; every feed is validated against the model's inputs as it arrives and the
first one before any work is done. Calibration runs them one sample at a time
(``cut``): a feed's leading axis is its sample axis, as ``limit`` counts it.
"""

from __future__ import annotations

import hashlib
import io
import os
import select
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, did_you_mean
from ..feeds import Feed, InputInfo, synthetic_feeds, validate_feeds
from . import script_child
from .files import glob_folders, image_files, source_files
from .source_specs import DataSource, ImageSource

DEFAULT_SYNTHETIC_SAMPLES = 16
"""Feeds a synthetic source yields when no ``limit`` is set."""
_HASH_CHUNK = 1 << 20


@dataclass
class DataSet:
    """A source bound to a model's inputs: re-iterable, validated, fingerprinted.

    ``dims`` and ``ranges`` shape synthetic data (symbolic dim values, value ranges).
    """

    source: DataSource
    inputs: Sequence[InputInfo]
    dims: Mapping[str, int] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    default_limit: int | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    @property
    def synthetic(self) -> bool:
        return self.source.kind == "synthetic"

    @property
    def limit(self) -> int | None:
        return self.source.limit or self.default_limit

    def describe(self) -> str:
        return self.source.describe()

    def feeds(self) -> Iterator[Feed]:
        """Feeds in a fixed order, each validated, at most ``limit`` samples in all."""
        left = self.limit
        for index, feed in enumerate(self._raw_feeds()):
            if left is not None and left <= 0:
                return
            validate_feeds([feed], self.inputs, self.describe(), first=index)
            if left is not None:
                rows = _rows(feed)
                if rows > left:
                    feed = {k: v[:left] if v.ndim else v for k, v in feed.items()}
                    rows = left
                left -= rows
            yield feed

    def first(self) -> Feed:
        """The first feed, validated: call before any work to fail early on bad data."""
        for feed in self.feeds():
            return feed
        raise DataError("the data source yields no data", self.describe())

    def take(self, count: int) -> list[Feed]:
        """The first ``count`` feeds (or fewer)."""
        out = []
        for feed in self.feeds():
            if len(out) >= count:
                break
            out.append(feed)
        if not out:
            raise DataError("the data source yields no data", self.describe())
        return out

    def fingerprint(self) -> str:
        """sha256 of the data's content and the settings that shape it (cached)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            # timeout_s shapes no data (and was not there when older keys were made).
            digest.update(self.source.model_dump_json(exclude={"timeout_s"}).encode())
            digest.update(repr((self.limit, sorted(self.dims.items()))).encode())
            kind = self.source.kind
            if kind in ("npz", "npy", "images"):
                for path in self.files():
                    digest.update(path.name.encode())
                    _hash_file(digest, path)
            elif kind == "script":
                # A script may read anything: hash what it yields.
                for feed in self.feeds():
                    for name in sorted(feed):
                        digest.update(name.encode())
                        digest.update(str(feed[name].dtype).encode())
                        digest.update(repr(feed[name].shape).encode())
                        digest.update(np.ascontiguousarray(feed[name]).tobytes())
            else:
                digest.update(repr(sorted(self.ranges.items())).encode())
                digest.update(repr([(i.name, str(i.dtype), i.shape) for i in self.inputs]).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    # -- the kinds --------------------------------------------------------------------------

    def files(self) -> list[Path]:
        """The files an npz, npy or images source reads (the order they are read in)."""
        names = [info.name for info in self.inputs]
        return source_files(self.source.kind, self.source.path or "", names)

    def _raw_feeds(self) -> Iterator[Feed]:
        kind = self.source.kind
        if kind == "npz":
            yield from _npz_feeds(self.files())
        elif kind == "npy":
            yield from _npy_feeds(glob_folders(self.source.npy or ""), self.inputs, self.source)
        elif kind == "images":
            yield from _image_feeds(self.source, self.inputs)
        elif kind == "script":
            yield from _script_feeds(
                Path(self.source.script or ""), self.source.function, self.source.timeout_s
            )
        else:
            seed = self.source.synthetic.seed if self.source.synthetic else 0
            count = self.limit or DEFAULT_SYNTHETIC_SAMPLES
            # One row per feed, so that ``limit`` counts samples like the other kinds.
            dims = {**self.dims}
            for info in self.inputs:
                if info.shape and not isinstance(info.shape[0], int) and info.shape[0]:
                    dims[info.shape[0]] = 1
            yield from synthetic_feeds(self.inputs, count, seed, dims, self.ranges)


def samples_in(feed: Feed, inputs: Sequence[InputInfo]) -> int | None:
    """How many samples ``feed`` holds, when its leading axis can be cut into feeds the
    model takes; None when it cannot: an input whose declared leading dim is fixed (a
    recurrent state [2, batch, 128], a fixed batch), arrays that differ in their leading
    size, or leading dims that name different symbols. 0-d arrays (a sample rate) are not
    batched: every sub-batch takes them whole."""
    declared = {info.name: info.shape for info in inputs}
    sizes: set[int] = set()
    symbols: set[str] = set()
    for name, array in feed.items():
        if not array.ndim:
            continue
        shape = declared.get(name)
        if not shape or isinstance(shape[0], int):
            return None
        if shape[0] is not None:
            symbols.add(shape[0])
        sizes.add(int(array.shape[0]))
    if len(sizes) != 1 or len(symbols) > 1:
        return None
    return sizes.pop()


def cut(feed: Feed, inputs: Sequence[InputInfo], rows: int = 1) -> Iterator[Feed]:
    """``feed`` in sub-batches of at most ``rows`` samples along its leading axis (views of
    its arrays, not copies), or whole when that axis cannot be cut (``samples_in``)."""
    count = samples_in(feed, inputs)
    if count is None or count <= rows:
        yield feed
        return
    for start in range(0, count, rows):
        yield {name: a[start : start + rows] if a.ndim else a for name, a in feed.items()}


def _rows(feed: Feed) -> int:
    for array in feed.values():
        if array.ndim:
            return int(array.shape[0])
    return 1


def _hash_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)


def read_npz(path: Path) -> Feed:
    """The arrays of one .npz file by name; a DataError naming it when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"not a readable .npz file: {error}", str(path)) from None


def _npz_feeds(paths: list[Path]) -> Iterator[Feed]:
    for path in paths:
        yield read_npz(path)


def _npy_feeds(
    folders: list[Path], inputs: Sequence[InputInfo], source: DataSource
) -> Iterator[Feed]:
    for folder in folders:
        arrays = {}
        for info in inputs:
            path = folder / f"{info.name}.npy"
            if not path.is_file():
                present = sorted(p.stem for p in folder.glob("*.npy"))
                raise DataError(
                    f"missing {info.name}.npy; the folder holds {present}, the model takes "
                    f"{[i.name for i in inputs]}",
                    str(folder),
                )
            try:
                # Memory-mapped: only the rows of the current feed are read.
                arrays[info.name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as error:
                raise DataError(f"not a readable .npy file: {error}", str(path)) from None
            if arrays[info.name].ndim == 0:
                raise DataError(
                    "holds a single value (a 0-d array); .npy data needs a leading sample axis",
                    str(path),
                )
        lengths = {name: (a.shape[0] if a.ndim else 1) for name, a in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"arrays differ in their leading (sample) axis: {lengths}", str(folder))
        total = next(iter(lengths.values()), 0)
        for start in range(0, total, source.batch):
            yield {name: np.array(a[start : start + source.batch]) for name, a in arrays.items()}


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise DataError(
            "image data sources need Pillow: pip install 'trtopt[images]'", "data.images"
        ) from None
    return Image


def _two(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def load_image(path: Path, spec: ImageSource) -> np.ndarray:
    """One image, preprocessed as declared, as an [C, H, W] or [H, W, C] array."""
    image_mod = _pil()
    try:
        with image_mod.open(path) as image:
            image = image.convert("L" if spec.color == "L" else "RGB")
            if spec.resize is not None:
                if isinstance(spec.resize, int):
                    w, h = image.size
                    ratio = spec.resize / min(w, h)
                    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
                else:
                    size = (spec.resize[1], spec.resize[0])
                image = image.resize(size, image_mod.Resampling.BILINEAR)
            if spec.crop is not None:
                ch, cw = _two(spec.crop)
                w, h = image.size
                if ch > h or cw > w:
                    raise DataError(f"crop {ch}x{cw} is larger than the image {h}x{w}", str(path))
                left, top = (w - cw) // 2, (h - ch) // 2
                image = image.crop((left, top, left + cw, top + ch))
            pixels = np.asarray(image, dtype=np.uint8)
    except image_mod.DecompressionBombError as error:
        raise DataError(f"refusing a decompression bomb: {error}", str(path)) from None
    except OSError as error:
        raise DataError(f"not a readable image: {error}", str(path)) from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2]
    for key in ("mean", "std"):
        values = getattr(spec, key)
        if spec.dtype != "uint8" and len(values) not in (1, channels):
            raise DataError(
                f"images.{key} has {len(values)} values, the images have {channels} "
                f"channel(s) ({spec.color}): give 1 or {channels}",
                "data.images",
            )
    if spec.color == "BGR":
        pixels = pixels[:, :, ::-1]
    if spec.dtype == "uint8":
        array = np.ascontiguousarray(pixels)
    else:
        mean = np.asarray(spec.mean, dtype=np.float32)
        std = np.asarray(spec.std, dtype=np.float32)
        array = (pixels.astype(np.float32) * np.float32(spec.scale) - mean) / std
        array = array.astype(spec.dtype)
    return np.ascontiguousarray(array.transpose(2, 0, 1)) if spec.layout == "NCHW" else array


def _image_feeds(source: DataSource, inputs: Sequence[InputInfo]) -> Iterator[Feed]:
    spec = source.images
    assert spec is not None
    names = [i.name for i in inputs]
    name = spec.input or (names[0] if len(names) == 1 else None)
    if name is not None and name not in names:
        raise DataError(
            f"images.input '{name}' is not a model input{did_you_mean(name, names)}; the "
            f"model takes {names}",
            "data.images",
        )
    if name is None:
        raise DataError(
            f"say which input the images feed (images.input); the model takes {names}",
            "data.images",
        )
    files = image_files(spec.folder)
    for start in range(0, len(files), source.batch):
        batch = [load_image(path, spec) for path in files[start : start + source.batch]]
        shapes = {a.shape for a in batch}
        if len(shapes) > 1:
            raise DataError(
                f"images differ in size after preprocessing {sorted(shapes)}; declare "
                "resize and crop",
                spec.folder,
            )
        yield {name: np.stack(batch)}


def _script_feeds(path: Path, function: str, timeout_s: float) -> Iterator[Feed]:
    """Feeds from a user's data script, run in a child process (``script_child``) that sends
    one feed per request. Whatever the script does (raise, ``sys.exit``, ``os._exit``, crash,
    hang past ``timeout_s`` for one feed) is a DataError naming it: it cannot end or stall
    trtopt, nor fake a success code. Ctrl-C reaches both processes and stays Ctrl-C."""
    if not path.is_file():
        raise DataError("data loader script not found", str(path))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_MAIN, str(_CHILD), str(path), function],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    try:
        index = 0
        while True:
            try:  # ask for the next feed; a child that is gone is reported by the read
                assert child.stdin is not None
                child.stdin.write(b"n")
            except OSError:
                pass
            kind, payload = _read_frame(child, path, function, index, timeout_s)
            if kind == script_child.DONE:
                return
            if kind == script_child.ERROR:
                raise DataError(payload.decode(errors="replace"), str(path))
            try:
                with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
                    arrays = {name: archive[name] for name in archive.files}
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
                raise DataError(
                    f"{function}() yielded values that are not arrays (item {index}): {error}",
                    str(path),
                ) from None
            yield arrays
            index += 1
    finally:
        _stop(child)


_CHILD = Path(script_child.__file__)
_CHILD_MAIN = (
    "import importlib.util as u, sys\n"
    "s = u.spec_from_file_location('trtopt_script_child', sys.argv[1])\n"
    "m = u.module_from_spec(s)\n"
    "s.loader.exec_module(m)\n"
    "del sys.argv[1]\n"
    "m.main()\n"
)
"""Runs script_child.py by path, so the child imports NumPy but not trtopt (1 s less)."""


def _read_frame(
    child: subprocess.Popen[bytes], path: Path, function: str, index: int, timeout_s: float
) -> tuple[bytes, bytes]:
    """One frame from the child, or a DataError saying how it ended or that it timed out."""
    deadline = time.monotonic() + timeout_s

    def read(count: int) -> bytes:
        return _read_exactly(child, count, deadline, path, function, index, timeout_s)

    kind, length = script_child.HEADER.unpack(read(script_child.HEADER.size))
    return kind, read(length)


def _read_exactly(
    child: subprocess.Popen[bytes],
    count: int,
    deadline: float,
    path: Path,
    function: str,
    index: int,
    timeout_s: float,
) -> bytes:
    assert child.stdout is not None
    fd = child.stdout.fileno()
    chunks, left = [], count
    while left:
        remaining = deadline - time.monotonic()
        ready = remaining > 0 and select.select([fd], [], [], remaining)[0]
        if not ready:
            child.kill()
            raise DataError(
                f"{function}() gave no feed (item {index}) within timeout_s={timeout_s:g} s; "
                "the script was stopped (raise the data source's timeout_s if it needs longer)",
                str(path),
            )
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            code = child.wait()
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise DataError(
                f"the data loader script {how} before {function}() finished (item {index})",
                str(path),
            )
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _stop(child: subprocess.Popen[bytes]) -> None:
    """End the child: it exits by itself once its request pipe closes; else it is killed."""
    for stream in (child.stdin, child.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
    try:
        child.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


_STOP_GRACE_S = 5.0
"""How long a child that has answered may take to exit once its pipe closes."""
