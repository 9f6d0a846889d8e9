"""Load and save ONNX models safely (external data, > 2 GiB), hash them, count their ops."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import (
    load_external_data_for_model,
    uses_external_data,
)

from .digests import files_digest
from .errors import ModelError

EXTERNAL_DATA_THRESHOLD = 1 << 30
"""Models whose protobuf is larger than this (1 GiB) are saved with external data; protobuf
itself cannot serialize more than 2 GiB."""
EXTERNAL_DATA_SUFFIX = ".data"


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    # onnx exports no public walker over initializers, Constant attributes and subgraphs.
    return [t for t in onnx.external_data_helper._get_all_tensors(model) if uses_external_data(t)]


def external_data_files(model: onnx.ModelProto, model_dir: Path) -> list[Path]:
    """The external data files a model references, refusing any outside ``model_dir``.

    An absolute location or one with ``..`` could make a crafted model read arbitrary files
    (the onnx package has had CVEs for exactly this), so it is an error, not a warning.
    """
    files: dict[Path, None] = {}
    root = model_dir.resolve()
    for tensor in _external_tensors(model):
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        if not location or "\0" in location:
            raise ModelError(
                f"tensor '{tensor.name}' has an external data location that is "
                + ("empty" if not location else f"not a file name (a NUL byte: {location!r})")
            )
        resolved = (root / location).resolve()
        if Path(location).is_absolute() or not resolved.is_relative_to(root):
            raise ModelError(
                f"tensor '{tensor.name}' points to external data outside the model's folder "
                f"('{location}'); refusing to load it"
            )
        if not resolved.is_file():
            raise ModelError(
                f"external data file '{location}' of tensor '{tensor.name}' is missing"
            )
        _check_span(tensor, entries, location, resolved.stat().st_size)
        files[resolved] = None
    return list(files)


_PACKED_4BIT = {
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
    *([onnx.TensorProto.FLOAT4E2M1] if hasattr(onnx.TensorProto, "FLOAT4E2M1") else []),
}


def _declared_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's dims and type need on disk; None where that is not fixed (strings)."""
    count = 1
    for dim in tensor.dims:
        count *= dim
    if tensor.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return None if tensor.data_type == onnx.TensorProto.STRING else count * itemsize


def _check_span(
    tensor: onnx.TensorProto, entries: dict[str, str], location: str, size: int
) -> None:
    """The bytes a tensor declares (offset, length, its dims) must lie inside its data file:
    a short or crafted file is the user's error here, not an out-of-bounds read later."""

    def number(key: str) -> int | None:
        if key not in entries:
            return None
        text = entries[key].strip()
        if not text.isdigit():
            raise ModelError(
                f"tensor '{tensor.name}' has external data {key} {entries[key]!r}, not a "
                f"non-negative integer (file '{location}')"
            )
        return int(text)

    offset, length = number("offset") or 0, number("length")
    needed = _declared_bytes(tensor)
    if length is not None and needed is not None and length != needed:
        raise ModelError(
            f"tensor '{tensor.name}' declares {length} bytes of external data in '{location}', "
            f"but its dims {list(tensor.dims)} need {needed}"
        )
    span = length if length is not None else needed if needed is not None else 0
    if offset + span > size:
        raise ModelError(
            f"tensor '{tensor.name}' reads bytes {offset}..{offset + span} of external data "
            f"file '{location}', which holds {size} bytes (truncated or not this model's data)"
        )


def load_model(path: str | Path, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model, turning every failure into a ModelError.

    ``external_data=False`` leaves external weights on disk (checked to exist inside the
    model's folder): ``graph_io.import_graph`` reads them when a pass needs them."""
    path = Path(path)
    if not path.is_file():
        raise ModelError("model file not found", place=str(path))
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ModelError(
            f"not a valid ONNX model (truncated or not a protobuf): {error}", str(path)
        ) from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelError("not a valid ONNX model (no IR version or graph)", str(path))
    try:
        external_data_files(model, path.parent)
    except ModelError as error:
        raise ModelError(error.message, str(path)) from None
    if external_data:
        load_external_data_for_model(model, str(path.parent))
    check_file(path)
    if not model.graph.output:
        raise ModelError("the model has no outputs: there is nothing to build or check", str(path))
    return model


def check_file(path: Path) -> None:
    """The ONNX checker on a model file (the path form reads it in C++, models over 2 GiB
    too, without a Python copy); a ModelError naming the file and what is wrong."""
    try:
        onnx.checker.check_model(str(path))
    except (
        onnx.checker.ValidationError,
        onnx.onnx_cpp2py_export.checker.ValidationError,
        UnicodeDecodeError,  # a corrupt string field (e.g. a flipped bit in a name)
    ) as error:
        # The checker's message runs over several lines (the node it names, then why): one.
        text = " ".join(str(error).split())
        text = text if len(text) <= 600 else text[:600] + "..."
        raise ModelError(f"invalid ONNX model: {text}", str(path)) from None


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Size of every tensor's values: what makes a model large. (``model.ByteSize()`` itself
    wraps around past 2 GiB.)"""
    return sum(_value_bytes(t) for t in onnx.external_data_helper._get_all_tensors(model))


_PACKED_4BIT = {
    getattr(onnx.TensorProto, name)
    for name in ("INT4", "UINT4", "FLOAT4E2M1")
    if hasattr(onnx.TensorProto, name)
}


def _value_bytes(tensor: onnx.TensorProto) -> int:
    """A tensor's bytes: raw data counted from its dims and type, since protobuf's ByteSize
    (and reading ``raw_data``) walks or copies every byte, about a second per 440 MB weight;
    other encodings by their serialized size."""
    if not tensor.HasField("raw_data"):
        return tensor.ByteSize()
    count = math.prod(tensor.dims)
    if tensor.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    try:
        return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):  # a type numpy has no dtype for
        return tensor.ByteSize()


def save_model(model: onnx.ModelProto, path: Path, external_data: bool | None = None) -> list[Path]:
    """Save ``model`` to ``path``; returns every file written.

    ``external_data`` None decides by size (EXTERNAL_DATA_THRESHOLD). Saving with external data
    moves the weights out of ``model`` (onnx does that in place), so do it last.
    """
    if external_data is None:
        external_data = tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
    path.parent.mkdir(parents=True, exist_ok=True)
    if not external_data:
        onnx.save_model(model, str(path))
        return [path]
    location = path.name + EXTERNAL_DATA_SUFFIX
    (path.parent / location).unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=1024,
    )
    data = path.parent / location
    return [path, data] if data.exists() else [path]


def model_files(path: Path) -> list[Path]:
    """A model file and the external data files it references, in that order."""
    header = onnx.load(str(path), load_external_data=False)
    return [path, *external_data_files(header, path.parent)]


def model_sha256(path: Path) -> str:
    """Hash of a model: its file's sha256, or with external data, the sha256 of the model
    file's and its data files' sha256s in order."""
    return files_digest(model_files(path))


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type in the main graph, sorted by op type."""
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))
