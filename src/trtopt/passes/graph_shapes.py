"""Shapes and dtypes as a graph computes them, ignoring what the model declares for its
outputs and intermediates (exporters get those wrong)."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph_io import export_model, quiet
from .graph_memo import memo

log = logging.getLogger("trtopt.passes")


def _infer(model: onnx.ModelProto, symbolic: bool = True) -> onnx.ModelProto | None:
    """ONNX Runtime's symbolic shape inference, which keeps dynamic dims named through shape
    arithmetic (so equal dims are seen as equal); ONNX's own inference where it fails. Never
    with auto-merge: it equates dims that conflict, and a fusion would bake that in."""
    if symbolic and any(o.domain in ("", "ai.onnx") and o.version >= 7 for o in model.opset_import):
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            # Its own infer_shapes() saves the model into the current folder whenever a shape
            # stays unknown ("sym_shape_infer_temp.onnx" and a data file): its loop, without that.
            inference = SymbolicShapeInference(2**31 - 1, False, False, 0)
            inference._preprocess(model)
            complete = False
            while inference.run_:
                complete = inference._infer_impl()
            if complete:
                inference._update_output_from_vi()
                return inference.out_mp_
            log.debug("symbolic shape inference incomplete; using onnx.shape_inference")
        except Exception as error:
            log.debug("symbolic shape inference failed (%s); using onnx.shape_inference", error)
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as error:  # inference is an aid: no shapes means "unknown", never wrong
        log.debug("shape inference failed: %s", error)
        return None


LIGHT_BYTES = 4096  # constants above this go to shape inference as dims and type only


def _nbytes(tensor: gs.Constant) -> int:
    try:
        return int(np.prod(tensor.shape)) * np.dtype(tensor.dtype).itemsize
    except TypeError:  # a dtype numpy cannot size (e.g. float8): count it as large
        return LIGHT_BYTES + 1


def _light_model(graph: gs.Graph) -> onnx.ModelProto:
    """The graph as a model for shape inference: no declared intermediate or output shapes, and
    large weights as typed inputs instead of bytes (inference needs their dims only; copying
    hundreds of MB per inference would dominate a fusion run)."""
    copy = graph.copy()  # tensors are copied, constant values shared
    # A fusion asks for shapes mid-round: the roots it replaced are still listed, with no
    # outputs and the name their replacement took. They compute nothing: leave them out.
    copy.nodes = [node for node in copy.nodes if node.outputs]
    for tensor in list(copy.tensors().values()):
        if isinstance(tensor, gs.Constant) and _nbytes(tensor) > LIGHT_BYTES:
            dtype, shape = tensor.dtype, list(tensor.shape)
            tensor.to_variable(dtype=dtype, shape=shape)
            tensor.type = "tensor_type"  # to_variable leaves this unset (graphsurgeon 0.6)
            copy.inputs.append(tensor)
        elif isinstance(tensor, gs.Variable):
            is_input = any(tensor is t for t in copy.inputs)
            if not is_input:
                tensor.shape = None
    with quiet():
        model = export_model(copy)
    del model.graph.value_info[:]
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    return model


def computed_shapes(
    graph: gs.Graph, symbolic: bool = True
) -> tuple[dict[str, list[int | str | None] | None], dict[str, np.dtype]]:
    """Shapes as the graph computes them (ONNX shape inference with data propagation), ignoring
    the shapes the model declares for its outputs and intermediates, which exporters get wrong.
    Empty when inference fails. ``symbolic``: try ONNX Runtime's symbolic inference first."""
    model = _light_model(graph)
    inferred = _infer(model, symbolic)
    if inferred is None:
        return {}, {}
    shapes: dict[str, list[int | str | None] | None] = {}
    dtypes: dict[str, np.dtype] = {}
    for info in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type:
            dtypes[info.name] = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if not tensor_type.HasField("shape"):
            shapes[info.name] = None
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor_type.shape.dim
        ]
        shapes[info.name] = dims
    return shapes, dtypes


def invalidate_shapes(graph: gs.Graph) -> None:
    """Forget the computed shapes of ``graph``: call after any change to it."""
    remembered = memo(graph)
    remembered.shapes = remembered.dtypes = None
