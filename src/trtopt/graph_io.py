"""Graphs to and from ONNX files with the weights left on disk.

A model of several GiB keeps its weights in external data files. Loading them into the
ModelProto, importing it, exporting the graph and saving the result would make a copy of every
weight at each step; here an external weight is read when a pass asks for its values, one
tensor at a time, and a save copies it file to file. Peak memory is then what the passes
themselves create (e.g. the FP16 copies of converted weights), not multiples of the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.external_data_helper import ExternalDataInfo, uses_external_data
from onnx_graphsurgeon.exporters.onnx_exporter import constant_to_onnx_tensor
from onnx_graphsurgeon.logger import G_LOGGER

from .model import EXTERNAL_DATA_SUFFIX, EXTERNAL_DATA_THRESHOLD, save_model

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


@contextmanager
def quiet() -> Iterator[None]:
    """Hide graphsurgeon's log lines below ERROR: its notes on a model with no default-domain
    opset or a type numpy lacks, duplicate-name reports on every export of a graph a pass is
    still editing, and what it removes. trtopt reports for itself."""
    previous = G_LOGGER.severity
    G_LOGGER.severity = max(previous, G_LOGGER.ERROR)
    try:
        yield
    finally:
        G_LOGGER.severity = previous


def constants(graph: gs.Graph) -> Iterator[gs.Constant]:
    """Every constant of ``graph``: initializers, Constant-node values and subgraphs' ones."""
    seen: set[int] = set()
    for current in graphs(graph):
        found = [t for t in current.tensors().values() if isinstance(t, gs.Constant)]
        for node in current.nodes:
            found += [v for v in node.attrs.values() if isinstance(v, gs.Constant)]
        for constant in found:
            if id(constant) not in seen:
                seen.add(id(constant))
                yield constant


def graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """``graph`` and every subgraph nested in its nodes' attributes (If, Loop, Scan bodies)."""
    pending = [graph]
    while pending:
        current = pending.pop()
        yield current
        for node in current.nodes:
            pending.extend(v for v in node.attrs.values() if isinstance(v, gs.Graph))


def _restore_type_attributes(proto: onnx.GraphProto | onnx.FunctionProto, graph: gs.Graph) -> None:
    """graphsurgeon (0.6) skips TypeProto attributes on import (Optional's ``type``,
    SequenceEmpty-like ops of other domains); put them back, as onnx.TypeProto values, which
    its exporter writes as they were. Nodes import in order, subgraphs with them."""
    for node_proto, node in zip(proto.node, graph.nodes):
        for attribute in node_proto.attribute:
            if attribute.type == onnx.AttributeProto.TYPE_PROTO:
                node.attrs[attribute.name] = attribute.tp
            elif attribute.type == onnx.AttributeProto.TYPE_PROTOS:
                node.attrs[attribute.name] = list(attribute.type_protos)
            elif attribute.type == onnx.AttributeProto.GRAPH:
                _restore_type_attributes(attribute.g, node.attrs[attribute.name])


def import_graph(model: onnx.ModelProto, base_dir: Path | None = None) -> gs.Graph:
    """Import a model loaded without its external data; its external weights stay on disk
    (``base_dir``: the folder their locations are relative to, the model's)."""
    with quiet():
        graph = gs.import_onnx(model)
    _restore_type_attributes(model.graph, graph)
    for proto, function in zip(model.functions, graph.functions):
        _restore_type_attributes(proto, function)
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


def weight_bytes(graph: gs.Graph) -> int:
    """Size of every constant's values in ``graph`` (subgraphs too), loaded or not."""
    return sum(nbytes(c) for c in constants(graph))


def signature(constant: gs.Constant, head: int = 4096) -> tuple:
    """What identifies a constant's values cheaply: where an on-disk one lives, else its dtype,
    shape and leading bytes."""
    values = constant._values
    if isinstance(values, ExternalValues):
        return (str(values.path), values.offset, values.length)
    array = np.asarray(constant.values)
    flat = np.ascontiguousarray(array).reshape(-1)
    return (str(array.dtype), array.shape, flat[: head // max(array.itemsize, 1)].tobytes())


def _proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    pending = [graph]
    while pending:
        current = pending.pop()
        yield current
        for node in current.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    pending.append(attribute.g)
                pending.extend(attribute.graphs)


def _foreign_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Declared types graphsurgeon cannot write back (optional, map, nested sequences): by
    value name, across the main graph and every subgraph."""
    found = {}
    for graph in _proto_graphs(model.graph):
        for info in (*graph.input, *graph.output, *graph.value_info):
            kind = info.type.WhichOneof("value")
            nested = (
                kind == "sequence_type"
                and info.type.sequence_type.elem_type.WhichOneof("value") != "tensor_type"
            )
            if kind not in (None, "tensor_type", "sequence_type") or nested:
                found[info.name] = info.type
    return found


def _text_constants_as_protos(graph: gs.Graph) -> None:
    """graphsurgeon writes every in-memory constant as raw bytes, which string tensors cannot
    be: give a loaded string constant back its TensorProto (onnx's own conversion)."""
    for constant in constants(graph):
        values = constant._values
        if isinstance(values, np.ndarray) and values.dtype.kind in ("O", "S", "U"):
            proto = onnx.numpy_helper.from_array(values.astype(object), constant.name)
            constant._values = gs.ir.tensor.LazyValues(proto)


def export_model(
    graph: gs.Graph, like: onnx.ModelProto | None = None, version: str = ""
) -> onnx.ModelProto:
    """Export ``graph``, keeping the source model's IR version and metadata (``like``).

    graphsurgeon (0.6) cannot write optional or map types and loses nested sequence types:
    those values are exported untyped and get the type the source model declared back."""
    _text_constants_as_protos(graph)
    foreign = _foreign_types(like) if like is not None else {}
    hidden = []
    for current in graphs(graph):
        for tensor in current.tensors().values():
            if isinstance(tensor, gs.Variable) and (
                tensor.name in foreign
                or tensor.type not in ("tensor_type", "sequence_type", "sparse_tensor_type")
                or isinstance(tensor.dtype, onnx.TypeProto)  # an optional's, after a copy
            ):
                hidden.append((tensor, tensor.type, tensor.dtype, tensor.shape))
                tensor.type, tensor.dtype, tensor.shape = "tensor_type", None, None
    try:
        with quiet():
            model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for tensor, kind, dtype, shape in hidden:
            tensor.type, tensor.dtype, tensor.shape = kind, dtype, shape
    if foreign:
        for proto in _proto_graphs(model.graph):
            for info in (*proto.input, *proto.output):
                if info.name in foreign:
                    info.type.CopyFrom(foreign[info.name])
    if like is not None:
        # A graph input or output never loses the type the source declared for it.
        declared = {i.name: i.type for i in (*like.graph.input, *like.graph.output)}
        for info in (*model.graph.input, *model.graph.output):
            untyped = not info.type.HasField("tensor_type") or not info.type.tensor_type.elem_type
            known = info.name in declared and declared[info.name].WhichOneof("value") is not None
            if known and untyped and info.name not in foreign:
                info.type.CopyFrom(declared[info.name])
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
