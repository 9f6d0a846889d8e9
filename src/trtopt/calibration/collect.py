"""Stream a data set through ONNX Runtime and hand every intermediate tensor to an observer.

The model's intermediate tensors are exposed as extra graph outputs, batch by batch; the
observer folds each array into its running statistics (histograms, ranges) and the array is
dropped before the next batch, so memory stays bounded by one batch's activations rather than
growing with the data set (ONNX Runtime's quantize_static keeps every activation of every
sample). When one batch's activations would exceed ``memory_budget`` bytes, the tensors are
split into groups and the data set is streamed once per group.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .sources import DataSet

log = logging.getLogger("trtopt.calibration")

DEFAULT_MEMORY_BUDGET = 1 << 30
"""Bytes of exposed activations per batch before tensors are collected in groups (1 GiB)."""
UNKNOWN_TENSOR_BYTES = 4 << 20
"""Assumed size of a tensor whose shape inference gives no static size."""

SMALL_INITIALIZER = 4096
"""Initializers up to this many bytes stay in the weightless copy (shape constants)."""

Observer = Callable[[str, np.ndarray], None]


def _session(
    model: onnx.ModelProto, outputs: Sequence[str], folder: Path | None = None
) -> ort.InferenceSession:
    """A session with ``outputs`` exposed. ``folder``: where ``model``'s external data lives
    (then the model is a header, written beside its data for ONNX Runtime to read)."""
    # The outputs are appended to ``model`` for the time it takes to serialize it, then
    # removed: a copy of the model (its weights) per group would double the peak memory.
    existing = {o.name for o in model.graph.output}
    added = [name for name in dict.fromkeys(outputs) if name not in existing]
    for name in added:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        if folder is None:
            return _open(model.SerializeToString())
        # Beside its data, under a name of its own: the locations are relative to the header.
        handle, name = tempfile.mkstemp(suffix=".onnx", dir=folder)
        os.close(handle)
        try:
            onnx.save_model(model, name)
            return _open(name)  # ONNX Runtime reads the weights while it builds the session
        finally:
            os.unlink(name)
    finally:
        for _ in added:
            del model.graph.output[-1]


def _open(model: bytes | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # Basic level only: constant folding and node-eliminating rewrites, never fusions that
    # would change what an exposed tensor holds.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers are graph inputs of the same type and
    shape: shape inference gives the same result without copying the weights."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    graph = light.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for tensor in model.graph.initializer:
        if tensor.ByteSize() > SMALL_INITIALIZER:
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
        else:
            graph.initializer.append(tensor)
    return light


def _static_bytes(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, int]:
    """Bytes per tensor for one batch from shape inference; unknown sizes get a guess."""
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless(model), data_prop=True)
    except Exception:  # shape inference is advisory here
        inferred = model
    sizes = {}
    infos = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}
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


def groups(model: onnx.ModelProto, names: Sequence[str], memory_budget: int) -> list[list[str]]:
    """Split ``names`` (in order) into groups whose estimated bytes fit ``memory_budget``."""
    sizes = _static_bytes(model, names)
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
    model: onnx.ModelProto | Path,
    data: DataSet,
    tensors: Sequence[str],
    observe: Observer,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    max_group: int | None = None,
) -> int:
    """Run ``data`` through ``model`` and call ``observe(name, array)`` for every tensor of
    ``tensors`` on every feed. Returns the number of feeds streamed (per group).

    ``model`` may be a file: its weights are then left on disk for ONNX Runtime to read (a
    model over 2 GiB cannot be serialized in memory at all)."""
    folder = None
    if isinstance(model, Path):
        folder = model.parent
        model = onnx.load(str(model), load_external_data=False)
    graph_inputs = {i.name for i in model.graph.input}
    fed = [name for name in tensors if name in graph_inputs]
    planned = groups(model, [n for n in tensors if n not in graph_inputs], memory_budget)
    if max_group:
        planned = [g[i : i + max_group] for g in planned for i in range(0, len(g), max_group)]
    if len(planned) > 1:
        log.info("collecting %d tensors in %d groups", len(tensors), len(planned))
    count = 0
    if fed and not planned:
        for feed in data.feeds():
            for name in fed:
                observe(name, feed[name])
            count += 1
    for index, group in enumerate(planned):
        session = _session(model, group, folder)
        count = 0
        for feed in data.feeds():
            if index == 0:  # graph inputs need no run: observe them with the first group
                for name in fed:
                    observe(name, feed[name])
            outputs = session.run(list(group), feed)
            for name, array in zip(group, outputs):
                observe(name, array)
            del outputs
            count += 1
        del session
    return count
