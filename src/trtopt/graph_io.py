"""Graphs to and from ONNX files with the weights left on disk.

A model of several GiB keeps its weights in external data files. Loading them into the
ModelProto, importing it, exporting the graph and saving the result would make a copy of every
weight at each step; here an external weight is read when a pass asks for its values, one
tensor at a time, and a save copies it file to file. Peak memory is then what the passes
themselves create (e.g. the FP16 copies of converted weights), not multiples of the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.external_data_helper import ExternalDataInfo, uses_external_data
from onnx_graphsurgeon.exporters.onnx_exporter import constant_to_onnx_tensor

from .model import EXTERNAL_DATA_SUFFIX, EXTERNAL_DATA_THRESHOLD

SIZE_THRESHOLD = 1024
"""Constants smaller than this stay inside the .onnx file when a model is saved with external
data (onnx's own default)."""
ALIGNMENT = 1 << 16
"""Offset alignment of each tensor in a data file, so ONNX Runtime and TensorRT can map them."""
_COPY_CHUNK = 16 << 20

# ONNX stores these little-endian, exactly as numpy holds them on the platforms trtopt runs on,
# so their bytes move between files and arrays untouched. Others (bfloat16, float8, 4-bit
# types, strings) go through onnx's own conversion.
_PLAIN_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.INT8,
        onnx.TensorProto.INT16,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT64,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.UINT32,
        onnx.TensorProto.UINT64,
        onnx.TensorProto.BOOL,
    }
)


class ExternalValues(gs.ir.tensor.LazyValues):
    """A constant whose bytes live in an external data file, read each time they are asked for.

    graphsurgeon exports a LazyValues through its ``tensor``: here that is a self-contained
    copy with the bytes loaded, so a graph exported in memory (constant folding's subgraphs,
    shape inference) is always complete. ``save_graph`` copies the bytes file to file instead.
    """

    def __init__(self, reference: onnx.TensorProto, base_dir: Path) -> None:
        from onnx_graphsurgeon.importers.onnx_importer import (
            get_itemsize,
            get_onnx_tensor_dtype,
            get_onnx_tensor_shape,
        )

        # LazyValues.__init__ would store ``reference`` as ``tensor``, a property here.
        self.reference = reference
        self.base_dir = base_dir
        self.shape = get_onnx_tensor_shape(reference)
        self.dtype = get_onnx_tensor_dtype(reference)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * get_itemsize(self.dtype)
        info = ExternalDataInfo(reference)
        self.path = base_dir / info.location
        self.offset = info.offset or 0
        self.length = info.length if info.length is not None else self.nbytes

    @property
    def tensor(self) -> onnx.TensorProto:
        loaded = onnx.TensorProto()
        loaded.CopyFrom(self.reference)
        onnx.external_data_helper.load_external_data_for_tensor(loaded, str(self.base_dir))
        return loaded

    def load(self) -> np.ndarray:
        if self.reference.data_type in _PLAIN_TYPES:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(self.reference.data_type)
            count = self.length // dtype.itemsize
            array = np.fromfile(self.path, dtype=dtype, count=count, offset=self.offset)
            return array.reshape(self.shape)
        return np.array(onnx.numpy_helper.to_array(self.tensor))

    def copy_to(self, handle: BinaryIO) -> None:
        """Append this tensor's bytes to the open file ``handle``, a chunk at a time."""
        buffer = bytearray(min(_COPY_CHUNK, max(self.length, 1)))
        with open(self.path, "rb") as source:
            source.seek(self.offset)
            left = self.length
            while left:
                view = memoryview(buffer)[: min(left, len(buffer))]
                read = source.readinto(view)
                if not read:
                    raise OSError(f"{self.path} ends before tensor '{self.reference.name}' does")
                handle.write(view[:read])
                left -= read


def constants(graph: gs.Graph) -> Iterator[gs.Constant]:
    """Every constant of ``graph``: initializers, Constant-node values and subgraphs' ones."""
    seen: set[int] = set()
    pending = [graph]
    while pending:
        current = pending.pop()
        found = [t for t in current.tensors().values() if isinstance(t, gs.Constant)]
        for node in current.nodes:
            for value in node.attrs.values():
                if isinstance(value, gs.Constant):
                    found.append(value)
                elif isinstance(value, gs.Graph):
                    pending.append(value)
        for constant in found:
            if id(constant) not in seen:
                seen.add(id(constant))
                yield constant


def import_graph(model: onnx.ModelProto, base_dir: Path | None = None) -> gs.Graph:
    """Import a model loaded without its external data; its external weights stay on disk
    (``base_dir``: the folder their locations are relative to, the model's)."""
    graph = gs.import_onnx(model)
    if base_dir is None:
        return graph
    for constant in constants(graph):
        values = constant._values
        if type(values) is gs.ir.tensor.LazyValues and uses_external_data(values.tensor):
            constant._values = ExternalValues(values.tensor, base_dir)
    return graph


def peek(constant: gs.Constant) -> np.ndarray:
    """A constant's values, without keeping a loaded copy of an on-disk weight in the graph
    (``constant.values`` caches what it loads: a pass reading every weight would hold all)."""
    if isinstance(constant._values, ExternalValues):
        return constant._values.load()
    return np.asarray(constant.values)


def nbytes(constant: gs.Constant) -> int:
    """Size of a constant's values, loaded or not."""
    return int(constant._values.nbytes)


def signature(constant: gs.Constant, head: int = 4096) -> tuple:
    """What identifies a constant's values cheaply: where an on-disk one lives, else its dtype,
    shape and leading bytes."""
    values = constant._values
    if isinstance(values, ExternalValues):
        return (str(values.path), values.offset, values.length)
    array = np.asarray(constant.values)
    flat = np.ascontiguousarray(array).reshape(-1)
    return (str(array.dtype), array.shape, flat[: head // max(array.itemsize, 1)].tobytes())


def export_model(
    graph: gs.Graph, like: onnx.ModelProto | None = None, version: str = ""
) -> onnx.ModelProto:
    """Export ``graph``, keeping the source model's IR version and metadata (``like``)."""
    model = gs.export_onnx(graph, do_type_check=like is not None)
    if like is not None:
        model.ir_version = like.ir_version
        model.producer_name, model.producer_version = "trtopt", version
        del model.metadata_props[:]
        model.metadata_props.extend(like.metadata_props)
    return model


class _Written(gs.ir.tensor.LazyValues):
    """A constant already written to the data file: graphsurgeon exports its reference."""

    def __init__(self, reference: onnx.TensorProto, values: object) -> None:
        self.tensor = reference
        self.shape, self.dtype, self.nbytes = values.shape, values.dtype, values.nbytes


def _write(constant: gs.Constant, handle: BinaryIO, location: str) -> onnx.TensorProto:
    """Append a constant's bytes to ``handle`` (aligned) and return its external reference."""
    offset = -handle.tell() % ALIGNMENT
    handle.write(b"\0" * offset)
    start = handle.tell()
    values = constant._values
    if isinstance(values, ExternalValues):
        reference = onnx.TensorProto()
        reference.CopyFrom(values.reference)
        values.copy_to(handle)
    elif isinstance(values, np.ndarray) and (
        onnx.helper.np_dtype_to_tensor_dtype(values.dtype) in _PLAIN_TYPES
        and constant.export_dtype == constant.dtype
    ):
        reference = onnx.TensorProto(
            data_type=onnx.helper.np_dtype_to_tensor_dtype(values.dtype), dims=values.shape
        )
        handle.write(np.ascontiguousarray(values).data)
    else:  # a type onnx converts itself (bfloat16, float8, ...) or a lazy in-memory tensor
        reference = onnx.TensorProto()
        reference.CopyFrom(
            values.tensor
            if isinstance(values, gs.ir.tensor.LazyValues)
            else constant_to_onnx_tensor(constant)
        )
        if not reference.HasField("raw_data"):  # typed fields (float_data, ...) to raw bytes
            raw = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(reference))
            reference.CopyFrom(raw)
        handle.write(reference.raw_data)
        reference.ClearField("raw_data")
    return _external(reference, constant.name, location, start, handle.tell() - start)


def _external(
    reference: onnx.TensorProto, name: str, location: str, offset: int, length: int
) -> onnx.TensorProto:
    reference.name = name
    del reference.external_data[:]
    reference.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = reference.external_data.add()
        entry.key, entry.value = key, value
    return reference


def _is_text(constant: gs.Constant) -> bool:
    """String tensors have no raw bytes to move (onnx keeps them in the model file too)."""
    try:
        return np.dtype(constant.dtype).kind in ("O", "S", "U")
    except TypeError:  # an ONNX type numpy does not know (float8, ...): bytes all the same
        return False


def save_graph(
    graph: gs.Graph,
    path: Path,
    like: onnx.ModelProto | None = None,
    version: str = "",
    external_data: bool | None = None,
) -> list[Path]:
    """Save ``graph`` to ``path``; returns every file written.

    ``external_data`` None decides by size (EXTERNAL_DATA_THRESHOLD). With external data, each
    constant of SIZE_THRESHOLD bytes or more goes to ``<name>.data`` one at a time: on-disk
    weights are copied file to file, never loaded. The graph is left as it was.
    """
    from .model import save_model

    everything = list(constants(graph))
    if external_data is None:
        external_data = sum(nbytes(c) for c in everything) > EXTERNAL_DATA_THRESHOLD
    path.parent.mkdir(parents=True, exist_ok=True)
    if not external_data:
        return save_model(export_model(graph, like, version), path, external_data=False)
    location = path.name + EXTERNAL_DATA_SUFFIX
    data_path = path.parent / location
    swapped: list[tuple[gs.Constant, object]] = []
    try:
        with open(data_path, "wb") as handle:
            for constant in everything:
                if nbytes(constant) < SIZE_THRESHOLD or _is_text(constant):
                    continue
                reference = _write(constant, handle, location)
                swapped.append((constant, constant._values))
                constant._values = _Written(reference, constant._values)
        model = export_model(graph, like, version)
    finally:
        for constant, values in swapped:
            constant._values = values
    # Small constants read from disk are exported loaded (ExternalValues.tensor).
    onnx.save_model(model, str(path))
    if not swapped:
        data_path.unlink()
        return [path]
    return [path, data_path]
