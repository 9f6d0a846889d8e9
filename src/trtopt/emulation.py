"""Reduced precision as TensorRT computes it, judged on ONNX Runtime's CPU.

ONNX Runtime's CPU has FP16 kernels for few ops (on x86: LayerNormalization and data movement;
not Conv, MatMul, Add, Mul, Sigmoid, BatchNormalization, pooling...). For the others its
InsertCastTransformer computes the op in FP32 and then removes the graph's own Casts around
it as "precision free" (onnxruntime 1.32), so the op sees unrounded FP32 inputs and its output
is never rounded: at any optimization level, an FP16 graph on ONNX Runtime's CPU misses much of
the error TensorRT's FP16 kernels will have (PP-OCRv4's recognizer: 1 - cosine 3.7e-6 without
graph optimizations, 1.3e-4 with every FP16 output rounded; benchmarks/README.md).

:func:`emulate` rewrites a graph for judging only: every FP16 (or BF16) tensor becomes an FP32
tensor holding the reduced-precision value, each op computes in FP32 on them, and its output
is rounded by a Cast to the reduced type and back, which ONNX Runtime keeps (nothing between
them needs an FP16 kernel). So every op is computed exactly and rounded once, as an FP16
kernel with FP32 accumulation does. What this cannot show is :data:`LIMITS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .lazy import lazy_import

if TYPE_CHECKING:
    import onnxruntime as ort
else:
    ort = lazy_import("onnxruntime", globals())

LOW = {TensorProto.FLOAT16: np.float16, TensorProto.BFLOAT16: ml_dtypes.bfloat16}
"""The reduced types emulated, and their numpy types."""
EXACT = frozenset(
    (
        "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat",
        "Split", "Slice", "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad",
        "DepthToSpace", "SpaceToDepth", "Where", "Relu", "MaxPool", "Max", "Min", "Neg",
        "Abs", "Clip", "ReduceMax", "ReduceMin",
    )
)  # fmt: skip
"""Ops whose output is one of their (already rounded) input values: not rounded again."""
FUSED = frozenset(("DequantizeLinear",))
"""Ops TensorRT fuses into their consumer (an INT8 Conv): their output never exists in FP16."""
LIMITS = (
    "each lowered op is computed in FP32 and its output rounded (FP16 kernels that accumulate "
    "in FP32): error from FP16 accumulation inside a TensorRT kernel (large reductions, "
    "softmax, some convolution tactics) is not shown, and an output that TensorRT fuses into "
    "the next kernel is rounded all the same (about one FP16 rounding more per fused op)"
)
"""What the emulation cannot show: the judgement is optimistic or pessimistic there."""


def low_precision(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s main graph holds FP16 or BF16 tensors (anything to emulate)."""
    graph = model.graph
    declared = (*graph.input, *graph.output, *graph.value_info)
    if any(t.type.tensor_type.elem_type in LOW for t in declared):
        return True
    if any(t.data_type in LOW for t in graph.initializer):
        return True
    return any(n.op_type == "Cast" and _to(n) in LOW for n in graph.node)


def emulate(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its FP16/BF16 rounding explicit in an FP32 graph (the module docstring);
    inputs and outputs keep their types. ``model`` itself is returned when it holds none.
    Initializers stored as external data keep their type here: :func:`fp32_weights` converts
    the arrays handed to the session."""
    if not low_precision(model):
        return model
    types = _types(model)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    for tensor in graph.initializer:
        if tensor.data_type in LOW and tensor.data_location != TensorProto.EXTERNAL:
            tensor.CopyFrom(_fp32(tensor))
        elif tensor.data_type in LOW:
            tensor.data_type = TensorProto.FLOAT
    nodes: list[onnx.NodeProto] = []
    renamed: dict[str, str] = {}
    for tensor in graph.input:
        if tensor.type.tensor_type.elem_type in LOW:
            renamed[tensor.name] = f"{tensor.name}__fp32"
            nodes.append(_cast(tensor.name, renamed[tensor.name], TensorProto.FLOAT))
    outputs = {t.name: t.type.tensor_type.elem_type for t in graph.output}
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type in LOW:
                attribute.t.CopyFrom(_fp32(attribute.t))
            elif attribute.name == "dtype" and attribute.i in LOW:
                attribute.i = TensorProto.FLOAT
        nodes.append(node)
        for index, name in enumerate(node.output):
            low = _to(node) if node.op_type == "Cast" else types.get(name)
            if not name or low not in LOW:
                continue
            final = f"{name}__fp32" if outputs.get(name) in LOW else name
            if node.op_type == "Cast":  # it rounds; a Cast back to FP32 follows
                node.output[index] = f"{name}__low"
                nodes.append(_cast(f"{name}__low", final, TensorProto.FLOAT))
            elif node.op_type in EXACT or node.op_type in FUSED:
                node.output[index] = final
            else:  # computed in FP32, rounded to the reduced type and back
                node.output[index] = f"{name}__raw"
                nodes.append(_cast(f"{name}__raw", f"{name}__low", low))
                nodes.append(_cast(f"{name}__low", final, TensorProto.FLOAT))
            renamed[name] = final
    for name, elem in outputs.items():
        if elem in LOW:
            nodes.append(_cast(renamed.get(name, name), name, elem))
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [v for v in graph.value_info if v.type.tensor_type.elem_type not in LOW]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return result


def fp32_weights(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """External initializers as :func:`emulate`'s graph declares them: FP16/BF16 ones in FP32
    (their values unchanged)."""
    low = tuple(LOW.values())
    return {
        name: array.astype(np.float32) if array.dtype in low else array
        for name, array in weights.items()
    }


def session(
    model: onnx.ModelProto,
    options: ort.SessionOptions | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session that judges ``model`` with its reduced-precision rounding
    emulated (:func:`emulate`); ``weights``: external initializers handed as arrays.

    A graph with rounding to emulate runs without graph optimizations: then every op is
    rounded exactly where the graph says (on PaddleOCR's detector and recognizer, the outputs
    equal a node-by-node run rounded by numpy), and no optimizer can move FP32 work across a
    rounding or drop one; with them, cosine against that run was 0.9999988."""
    options = options or ort.SessionOptions()
    options.log_severity_level = 3
    if low_precision(model):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if weights:
        arrays = fp32_weights(weights)
        values = [ort.OrtValue.ortvalue_from_numpy(array) for array in arrays.values()]
        options.add_external_initializers(list(arrays), values)
    return ort.InferenceSession(
        emulate(model).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Each tensor's element type, as declared or as ONNX's shape inference finds it."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # onnx raises many kinds; the declared types remain
        inferred = model.graph
    return {
        v.name: v.type.tensor_type.elem_type
        for v in (*inferred.input, *inferred.output, *inferred.value_info)
    }


def _to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _cast(source: str, target: str, to: int) -> onnx.NodeProto:
    return onnx.helper.make_node("Cast", [source], [target], name=f"{target}__emulated", to=to)


def _fp32(tensor: onnx.TensorProto) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor).astype(np.float32)
    return numpy_helper.from_array(values, tensor.name)
