"""Stream a data set through ONNX Runtime and hand every intermediate tensor to an observer.

The model's intermediate tensors are exposed as extra graph outputs, sample by sample; the
observer folds each array into its running statistics (histograms, ranges) and the array is
dropped before the next sample, so memory stays bounded by one sample's activations rather
than growing with the data set (ONNX Runtime's quantize_static keeps every activation of every
sample) or with the size of a feed. When one sample's activations would exceed
``memory_budget`` bytes, the tensors are split into groups and the data set is streamed once
per group.

Every feed is cut into one-sample feeds along its leading axis before it runs
(``sources.cut``), for two reasons:

- The statistics must not depend on how the samples are grouped into feeds. A streaming
  histogram's range is set by the first array it sees and grows by doubling, so its bins (and
  every calibrator's result) depend on the arrays it is handed: the same 16 text-detector
  images as one batch-16 feed or as 16 one-image feeds gave entropy ranges 0.43-2.5x apart
  (BERT-base: 0.07-1.1x). Handed one sample at a time, an observer sees the same arrays in
  the same order however the data is batched, bit for bit. The alternative, running whole
  feeds and cutting each observed tensor along its batch axis, needs that axis per tensor,
  and intermediate tensors do not keep it first (a Transpose or Reshape in attention heads,
  batch and sequence flattened into one axis for a MatMul, a time-major RNN); and a sample
  is then only the same as alone where ONNX Runtime's kernels compute it the same at every
  batch size (a GPU provider's need not).
- The memory a run needs follows the feed: ONNX Runtime holds every activation of the batch,
  not only the exposed ones (PP-OCRv4 detector, one batch-16 640x640 feed: 3.1 GB peak RSS
  under a 1 GiB budget; cut into samples: 0.42 GB, the feed itself included).

What the cut costs is ONNX Runtime's batching, measured on a CPU: 16 runs of one sample
against one batch-16 run took 0.8-1.1x the time on the PP-OCRv4 detector at 640x640,
1.1-1.5x on ResNet-50 and the PP-OCRv4 classifier, 2-3x on BERT-base at sequence 32 (its
batch-16 feeds calibrate 2.5x slower than before: as fast as the same data in one-sample
feeds did and does). The histogram work is the same, or less (smaller arrays). A feed that
cannot be cut (an input with a fixed leading dim, such as a recurrent state [2, batch, 128])
runs whole, as before.

The weights of an in-memory model are not copied for ONNX Runtime: the model it loads has its
large initializers turned into graph inputs (``split``, ``split_graph``), and every run feeds
them straight from the arrays the caller already holds (ONNX Runtime wraps a contiguous numpy
input without copying it). A session built from the whole model would hold two more copies
of the weights while it runs: the serialized model and ONNX Runtime's own initializers (more
with pre-packed MatMul weights).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import progress
from ..graph_io import nbytes, peek
from ..lazy import lazy_import
from .sources import DataSet, cut

if TYPE_CHECKING:
    import onnxruntime as ort
else:
    ort = lazy_import("onnxruntime", globals())  # a compile served from the cache runs no session

log = logging.getLogger("trtopt.calibration")

DEFAULT_MEMORY_BUDGET = 1 << 30
"""Bytes of exposed activations per run (one sample, where a feed can be cut) before tensors
are collected in groups (1 GiB)."""
COLLECT_VERSION = 2
"""Bumped whenever what an observer is handed can change (2: one sample at a time): part of
the range cache key."""
UNKNOWN_TENSOR_BYTES = 4 << 20
"""Assumed size of a tensor whose shape inference gives no static size."""

SMALL_INITIALIZER = 4096
"""Initializers up to this many bytes stay in the weightless copy (shape constants)."""

Observer = Callable[[str, np.ndarray], None]
Weights = Mapping[str, np.ndarray]

CPU_ONLY: tuple[tuple[str, dict[str, Any]], ...] = (("CPUExecutionProvider", {}),)
_PROVIDERS: ContextVar[Sequence[tuple[str, dict[str, Any]]]] = ContextVar(
    "trtopt_calibration_providers", default=CPU_ONLY
)


@contextlib.contextmanager
def session_providers(providers: Sequence[tuple[str, dict[str, Any]]]) -> Iterator[None]:
    """Within the block, calibration sessions run on ``providers`` (ONNX Runtime's names and
    options, in order of preference; the recipe's `calibration` section, checked by the
    caller); outside it, on the CPU."""
    token = _PROVIDERS.set(tuple(providers))
    try:
        yield
    finally:
        _PROVIDERS.reset(token)


FEEDABLE = frozenset(
    np.dtype(t)
    for t in (
        np.float32,
        np.float16,
        np.float64,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.bool_,
    )
)
"""Element types ONNX Runtime takes from a numpy input as they are. Weights of other types
(bfloat16, float8, 4-bit) stay initializers of the model."""


def _session(model: onnx.ModelProto, outputs: Sequence[str]) -> ort.InferenceSession:
    """A session with ``outputs`` exposed."""
    # The outputs are appended to ``model`` for the time it takes to serialize it, then
    # removed: a copy of the model (its weights) per group would double the peak memory.
    existing = {o.name for o in model.graph.output}
    added = [name for name in dict.fromkeys(outputs) if name not in existing]
    for name in added:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        serialized = model.SerializeToString()
    finally:
        for _ in added:
            del model.graph.output[-1]
    options = ort.SessionOptions()
    # Basic level only: constant folding and node-eliminating rewrites, never fusions that
    # would change what an exposed tensor holds. (The extended level measured no faster with
    # every quantized input exposed; the full level's NCHWc layouts fail on weights fed as
    # inputs. The memory settings, arena and pre-packing, matter little once the weights are
    # fed: the session then holds one batch's activations.)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    return ort.InferenceSession(serialized, options, providers=list(_PROVIDERS.get()))


def weightless(model: onnx.ModelProto, feedable_only: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers are graph inputs of the same type and
    shape: shape inference gives the same result without copying the weights.
    ``feedable_only``: only initializers ONNX Runtime can be fed from numpy (FEEDABLE)."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    graph = light.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for tensor in model.graph.initializer:
        large = tensor.ByteSize() > SMALL_INITIALIZER and not _external(tensor)
        if large and (not feedable_only or _feedable_type(tensor.data_type)):
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
        else:
            graph.initializer.append(tensor)
    return light


def split(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``model`` with its large initializers turned into graph inputs of the same type and
    shape, and their values (one copy, made here; the caller may drop ``model``)."""
    light = weightless(model, feedable_only=True)
    names = {i.name for i in light.graph.input}
    weights = {
        t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name in names
    }
    return light, weights


def split_graph(
    graph: gs.Graph, external: bool = False
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``graph`` exported with its large constants as graph inputs, and their values: the
    graph's own arrays, not copies (weights still held lazily are loaded into the graph
    once; ones left on disk are read for the caller only).

    ``external``: the constants stay initializers, as external data whose bytes ONNX Runtime
    is handed from the arrays (``SessionOptions.add_external_initializers``): the session
    then optimizes and runs exactly the graph a whole export would give (constant weights),
    without serializing them. Fed as inputs, the weights are not constants to ONNX Runtime,
    which then neither fuses Q/DQ around them nor pre-packs them: the numbers differ."""
    light = graph.copy()  # shares the constants' values; the copies are changed below
    originals = graph.tensors()
    weights = {}
    for name, tensor in light.tensors().items():
        if not isinstance(tensor, gs.Constant) or nbytes(tensor) <= SMALL_INITIALIZER:
            continue
        if not _feedable(tensor):
            continue
        values = np.ascontiguousarray(peek(originals[name]))
        weights[name] = values
        if external:
            tensor._values = _Handed(name, values)
            continue
        tensor.to_variable(dtype=values.dtype, shape=list(values.shape))
        tensor.type = "tensor_type"  # what gs.Variable() sets and to_variable() does not
        light.inputs.append(tensor)
    return gs.export_onnx(light, do_type_check=False), weights


class _Handed(gs.ir.tensor.LazyValues):
    """Values graphsurgeon exports as an external-data reference (it exports a LazyValues
    through its ``tensor``); the bytes are handed to ONNX Runtime separately."""

    LOCATION = "trtopt-in-memory"

    def __init__(self, name: str, values: np.ndarray) -> None:
        # LazyValues.__init__ would read shape and type from a tensor holding the data.
        data_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
        self.tensor = onnx.TensorProto(name=name, data_type=data_type, dims=values.shape)
        self.tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (
            ("location", self.LOCATION),
            ("offset", "0"),
            ("length", str(values.nbytes)),
        ):
            entry = self.tensor.external_data.add()
            entry.key, entry.value = key, value
        self.shape, self.dtype, self.nbytes = values.shape, values.dtype, values.nbytes


def _feedable(constant: gs.Constant) -> bool:
    export = constant.export_dtype
    try:
        dtype = np.dtype(constant.dtype)
        exported_as_held = export is None or np.dtype(export) == dtype
    except TypeError:  # an ONNX type numpy has no name for (exported as another type)
        return False
    return exported_as_held and dtype in FEEDABLE


def _external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _feedable_type(data_type: int) -> bool:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)) in FEEDABLE
    except (KeyError, TypeError, ValueError):
        return False


def _static_bytes(
    model: onnx.ModelProto, names: Sequence[str], inputs: Mapping[str, tuple] | None = None
) -> dict[str, int]:
    """Bytes per tensor for one run from shape inference; unknown sizes get a guess.

    ``inputs``: the shapes of one run's inputs (the first sample's). With them, inference
    sees the real batch and sequence sizes rather than symbolic dims, whose sizes would have
    to be guessed (and a guess large enough to be safe splits the tensors into needless
    groups, each a full pass over the data)."""
    light = weightless(model)
    if inputs:
        del light.graph.value_info[:]  # declared with symbolic dims: inferred again below
        for value in light.graph.input:
            shape = inputs.get(value.name)
            dims = value.type.tensor_type.shape.dim
            if shape is not None and len(dims) == len(shape):
                for dim, size in zip(dims, shape):
                    dim.Clear()
                    dim.dim_value = int(size)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:  # shape inference is advisory here
        inferred = model
    sizes = {}
    infos = {v.name: v for v in (*inferred.graph.output, *inferred.graph.value_info)}
    for name in names:
        info = infos.get(name)
        size = UNKNOWN_TENSOR_BYTES
        if info is not None and info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                count = int(np.prod([d.dim_value for d in dims], dtype=np.int64))
                size = count * 4
            else:
                known = [d.dim_value for d in dims if d.HasField("dim_value")]
                size = max(UNKNOWN_TENSOR_BYTES, int(np.prod(known or [1])) * 4 * 64)
        sizes[name] = size
    return sizes


def groups(
    model: onnx.ModelProto,
    names: Sequence[str],
    memory_budget: int,
    inputs: Mapping[str, tuple] | None = None,
) -> list[list[str]]:
    """Split ``names`` (in order) into groups whose estimated bytes fit ``memory_budget``
    (``inputs``: one run's input shapes, see ``_static_bytes``)."""
    sizes = _static_bytes(model, names, inputs)
    result: list[list[str]] = [[]]
    used = 0
    for name in names:
        if result[-1] and used + sizes[name] > memory_budget:
            result.append([])
            used = 0
        result[-1].append(name)
        used += sizes[name]
    return [g for g in result if g]


def collect(
    model: onnx.ModelProto,
    data: DataSet,
    tensors: Sequence[str],
    observe: Observer,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    max_group: int | None = None,
    weights: Weights | None = None,
) -> int:
    """Run ``data`` through ``model`` one sample at a time (``sources.cut``) and call
    ``observe(name, array)`` for every tensor of ``tensors`` on every sample. Returns the
    number of feeds streamed (per group).

    ``memory_budget``: bytes of exposed tensors per sample before they are collected in
    groups, one pass over the data each. ``weights``: the values of
    ``model``'s graph inputs that stand for its weights (``split``, ``split_graph``); an
    in-memory ``model`` given without them is split here."""
    if weights is None:
        model, weights = split(model)
    weights = weights or {}
    graph_inputs = {i.name for i in model.graph.input} - set(weights)
    fed = [name for name in tensors if name in graph_inputs or name in weights]
    head = data.first()
    first = next(cut(head, data.inputs))
    shapes = {name: np.shape(array) for name, array in first.items()}
    computed = [n for n in tensors if n not in graph_inputs and n not in weights]
    planned = groups(model, computed, memory_budget, shapes)
    if max_group:
        planned = [g[i : i + max_group] for g in planned for i in range(0, len(g), max_group)]
    if len(planned) > 1:
        log.info("collecting %d tensors in %d groups", len(tensors), len(planned))
    if first is head and any(np.ndim(a) and np.shape(a)[0] > 1 for a in head.values()):
        log.info(
            "calibration feeds run whole: the model's inputs do not let their leading axis be "
            "cut into samples (a fixed leading dim)"
        )
    del head, first  # views of the first feed: not held through the runs
    passes = planned or ([[]] if fed else [])
    count = 0
    with progress.bar("calibrate", None, "feed") as shown:
        for index, group in enumerate(passes):
            if len(passes) > 1:
                shown.set_description(f"calibrate (tensor group {index + 1}/{len(passes)})")
            session = _session(model, group) if group else None
            count = 0
            for feed in data.feeds():
                for sample in cut(feed, data.inputs):
                    if index == 0:  # graph inputs need no run: observed with the first group
                        for name in fed:
                            observe(name, sample[name] if name in sample else weights[name])
                    if session is not None:
                        outputs = session.run(list(group), {**sample, **weights})
                        for name, array in zip(group, outputs):
                            observe(name, array)
                        del outputs
                count += 1
                shown.update(1)
            del session
    return count
