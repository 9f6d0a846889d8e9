"""The files a data source reads, found from its path or glob alone (standard library only:
whether a recipe's data changed is known without loading NumPy)."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
FILE_KINDS = ("npz", "npy", "images")
"""The source kinds that read files (a script may read anything; synthetic reads nothing)."""


def source_files(kind: str, path: str, inputs: Sequence[str]) -> list[Path]:
    """The files a source of ``kind`` at ``path`` reads for a model whose inputs are named
    ``inputs``: every .npz file the glob matches, ``<input>.npy`` in every folder it matches,
    every image under the folder. A DataError names the path when it matches nothing."""
    if kind == "npz":
        return glob_files(path, "an .npz data file")
    if kind == "npy":
        return [folder / f"{name}.npy" for folder in glob_folders(path) for name in inputs]
    if kind == "images":
        return image_files(path)
    raise ValueError(f"a {kind} source reads no files of its own")


def glob_files(pattern: str, what: str) -> list[Path]:
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    files = [Path(p) for p in paths if Path(p).is_file()]
    if not files:
        raise DataError(f"no {what} found", pattern)
    return files


def glob_folders(pattern: str) -> list[Path]:
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    folders = [Path(p) for p in paths if Path(p).is_dir()]
    if not folders:
        raise DataError("no .npy data folder found", pattern)
    return folders


def image_files(folder: str) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise DataError("image folder not found", folder)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder", folder)
    return files
