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
first one before any work is done.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import sys
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import DataError
from ..feeds import Feed, InputInfo, synthetic_feeds, validate_feeds

DEFAULT_SYNTHETIC_SAMPLES = 16
"""Feeds a synthetic source yields when no ``limit`` is set."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
_HASH_CHUNK = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ImageSource(_Strict):
    """An image folder and the preprocessing the model expects (applied in this order)."""

    folder: str
    """Folder of images (searched recursively; .jpg .jpeg .png .bmp .webp .tif .ppm)."""
    input: str | None = None
    """The model input the images feed; default: the model's only input."""
    resize: Annotated[int, Field(ge=1)] | tuple[int, int] | None = None
    """Resize: an int scales the shorter side to it (keeping aspect), [h, w] is exact."""
    crop: Annotated[int, Field(ge=1)] | tuple[int, int] | None = None
    """Center crop to this size (int: square) after resizing."""
    color: Literal["RGB", "BGR", "L"] = "RGB"
    """Channel order (L: grayscale, one channel)."""
    scale: float = 1.0 / 255.0
    """Pixel values (0..255) are multiplied by this first."""
    mean: list[float] = [0.0]
    """Subtracted per channel after scaling (one value broadcasts)."""
    std: list[float] = [1.0]
    """Divided per channel after subtracting the mean."""
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    """Element type of the fed array (uint8 skips scale/mean/std)."""


class SyntheticSource(_Strict):
    """Random data; ranges come from the recipe's ``inputs.<name>.range``."""

    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    """NumPy's seed range: 0 <= seed < 2**32."""


class DataSource(_Strict):
    """Exactly one of npz, npy, images, script, synthetic (``synthetic`` also as a string)."""

    npz: str | None = None
    """A path or glob of .npz files; each is one feed, arrays keyed by input name."""
    npy: str | None = None
    """A folder (or glob of folders) with one <input>.npy per model input, leading axis =
    samples; memory-mapped and cut into feeds of ``batch`` rows."""
    images: ImageSource | None = None
    script: str | None = None
    """A Python file whose ``load_data()`` yields feed dicts (Polygraphy's convention)."""
    function: str = "load_data"
    """The function ``script`` calls."""
    synthetic: SyntheticSource | None = None
    batch: Annotated[int, Field(ge=1)] = 1
    """Rows per feed for npy and images sources."""
    limit: Annotated[int, Field(ge=1)] | None = None
    """At most this many samples (rows along the leading axis), the last feed cut to fit."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `synthetic` alone or `synthetic: true`; `synthetic: null` is the default (a dumped
        # recipe writes it), which is synthetic too when no other kind is given.
        if value == "synthetic":
            return {"synthetic": {}}
        if isinstance(value, dict) and value.get("synthetic") is True:
            return {**value, "synthetic": {}}
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> DataSource:
        kinds = [k for k in ("npz", "npy", "images", "script", "synthetic") if getattr(self, k)]
        if len(kinds) > 1:
            raise ValueError(f"give one data source kind, not {kinds}")
        return self

    @property
    def kind(self) -> str:
        for kind in ("npz", "npy", "images", "script"):
            if getattr(self, kind):
                return kind
        return "synthetic"

    def describe(self) -> str:
        if self.kind == "images":
            assert self.images is not None
            return f"images: {self.images.folder}"
        if self.kind == "synthetic":
            seed = self.synthetic.seed if self.synthetic else 0
            return f"synthetic (seed {seed})"
        return f"{self.kind}: {getattr(self, self.kind)}"


SOURCE_PATH_FIELDS: tuple[tuple[str, ...], ...] = (
    ("npz",),
    ("npy",),
    ("script",),
    ("images", "folder"),
)
"""Path fields of a source, relative to the recipe file that writes them."""


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
            digest.update(self.source.model_dump_json().encode())
            digest.update(repr((self.limit, sorted(self.dims.items()))).encode())
            kind = self.source.kind
            if kind in ("npz", "npy", "images"):
                for path in self._files():
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

    def _files(self) -> list[Path]:
        kind = self.source.kind
        if kind == "npz":
            return _glob_files(self.source.npz or "", "an .npz data file")
        if kind == "npy":
            return [
                folder / f"{info.name}.npy"
                for folder in _glob_folders(self.source.npy or "")
                for info in self.inputs
            ]
        assert self.source.images is not None
        return _image_files(self.source.images.folder)

    def _raw_feeds(self) -> Iterator[Feed]:
        kind = self.source.kind
        if kind == "npz":
            yield from _npz_feeds(self._files())
        elif kind == "npy":
            yield from _npy_feeds(_glob_folders(self.source.npy or ""), self.inputs, self.source)
        elif kind == "images":
            yield from _image_feeds(self.source, self.inputs)
        elif kind == "script":
            yield from _script_feeds(Path(self.source.script or ""), self.source.function)
        else:
            seed = self.source.synthetic.seed if self.source.synthetic else 0
            count = self.limit or DEFAULT_SYNTHETIC_SAMPLES
            # One row per feed, so that ``limit`` counts samples like the other kinds.
            dims = {**self.dims}
            for info in self.inputs:
                if info.shape and not isinstance(info.shape[0], int) and info.shape[0]:
                    dims[info.shape[0]] = 1
            yield from synthetic_feeds(self.inputs, count, seed, dims, self.ranges)


def _rows(feed: Feed) -> int:
    for array in feed.values():
        if array.ndim:
            return int(array.shape[0])
    return 1


def _hash_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)


def _glob_files(pattern: str, what: str) -> list[Path]:
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    files = [Path(p) for p in paths if Path(p).is_file()]
    if not files:
        raise DataError(f"no {what} found", pattern)
    return files


def _glob_folders(pattern: str) -> list[Path]:
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    folders = [Path(p) for p in paths if Path(p).is_dir()]
    if not folders:
        raise DataError("no .npy data folder found", pattern)
    return folders


def _npz_feeds(paths: list[Path]) -> Iterator[Feed]:
    for path in paths:
        try:
            with np.load(path, allow_pickle=False) as archive:
                yield {name: archive[name] for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise DataError(f"not a readable .npz file: {error}", str(path)) from None


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
        lengths = {name: (a.shape[0] if a.ndim else 1) for name, a in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"arrays differ in their leading (sample) axis: {lengths}", str(folder))
        total = next(iter(lengths.values()), 0)
        for start in range(0, total, source.batch):
            yield {name: np.array(a[start : start + source.batch]) for name, a in arrays.items()}


def _image_files(folder: str) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise DataError("image folder not found", folder)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder", folder)
    return files


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
    except OSError as error:
        raise DataError(f"not a readable image: {error}", str(path)) from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
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
    if name is None or name not in names:
        raise DataError(
            f"say which input the images feed (images.input); the model takes {names}",
            "data.images",
        )
    files = _image_files(spec.folder)
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


def _script_feeds(path: Path, function: str) -> Iterator[Feed]:
    """Feeds from a user's data script. Its code may raise anything, SystemExit included: all
    but Ctrl-C is a DataError naming the script, so that it cannot end trtopt with a success
    code of its own."""
    if not path.is_file():
        raise DataError("data loader script not found", str(path))
    module_name = f"trtopt_data_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DataError("cannot import the data loader script", str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        sys.modules.pop(module_name, None)
        raise DataError(
            f"the data loader script failed: {type(error).__name__}: {error}", str(path)
        ) from None
    loader = getattr(module, function, None)
    if not callable(loader):
        raise DataError(f"the script defines no function {function}()", str(path))
    try:
        feeds = iter(loader())
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        raise DataError(
            f"{function}() failed: {type(error).__name__}: {error}", str(path)
        ) from None
    index = 0
    while True:
        try:  # only the script's own code: a GeneratorExit at our yield must pass through
            feed = next(feeds)
        except StopIteration:
            return
        except KeyboardInterrupt:
            raise
        except BaseException as error:
            raise DataError(
                f"{function}() failed: {type(error).__name__}: {error}", str(path)
            ) from None
        if not isinstance(feed, Mapping):
            raise DataError(
                f"{function}() yielded a {type(feed).__name__}, not a dict of arrays "
                f"(item {index})",
                str(path),
            )
        try:
            arrays = {str(k): np.asarray(v) for k, v in feed.items()}
        except Exception as error:
            raise DataError(
                f"{function}() yielded values that are not arrays (item {index}): {error}",
                str(path),
            ) from None
        yield arrays
        index += 1
