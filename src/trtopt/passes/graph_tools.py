"""Graph helpers the precision passes share: element types, node names, shape subgraphs,
exclusion patterns, and raising a graph's opset (by declaration or by ONNX's converter)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph_io import ExternalValues, constants, export_model, import_graph
from .fusion.opset import opset, raise_opset, set_default_opset
from .graph_shapes import computed_shapes

SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "Slice": (1, 2, 3, 4),
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "Pad": (1, 3),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "TopK": (1,),
    "OneHot": (1,),
    "Split": (1,),
    "ReduceMean": (1,),
    "ReduceSum": (1,),
    "ReduceMax": (1,),
    "ReduceMin": (1,),
    "Gather": (1,),
    "GatherElements": (1,),
    "GatherND": (1,),
    "ScatterND": (1,),
    "NonMaxSuppression": (2, 3, 4),
}
"""Inputs that carry shapes, indices or sizes rather than data: what feeds only them is a
shape subgraph, never quantized or lowered."""
SHAPE_PRODUCERS = ("Shape", "Size")


def onnx_dtype(tensor: gs.Tensor) -> int | None:
    """A tensor's ONNX element type, or None when unknown."""
    dtype = tensor.dtype
    if dtype is None:
        return None
    if isinstance(dtype, int):
        return dtype
    try:
        return int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    except (TypeError, KeyError, ValueError):
        return None


def is_float(tensor: gs.Tensor, dtype: int = onnx.TensorProto.FLOAT) -> bool:
    return onnx_dtype(tensor) == dtype


def with_types(graph: gs.Graph) -> gs.Graph:
    """The graph with every intermediate tensor's dtype and shape from shape inference.

    Inference is best effort (unknown dtypes are handled conservatively) and sees the weights
    as typed inputs, never their bytes, so a large model is not held twice."""
    shapes, dtypes = computed_shapes(graph)
    io = {id(t) for t in (*graph.inputs, *graph.outputs)}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in io and tensor.name in dtypes:
            tensor.dtype = dtypes[tensor.name]
            tensor.shape = shapes.get(tensor.name)
    return graph


def name_nodes(graph: gs.Graph) -> None:
    """Give every unnamed node a stable unique name (``<op>_<index>``), so that reports and
    ``exclude.nodes`` can name it."""
    taken = {node.name for node in graph.nodes if node.name}
    for index, node in enumerate(graph.nodes):
        if not node.name:
            name = f"{node.op}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def shape_nodes(graph: gs.Graph) -> set[str]:
    """Names of nodes that compute only shapes/indices: everything they produce ends in a
    shape-like input (SHAPE_INPUTS) or comes from Shape/Size."""
    result: set[str] = set()
    outputs = {id(t) for t in graph.outputs}
    for node in reversed(graph.nodes):  # consumers before producers (graph is toposorted)
        if node.op in SHAPE_PRODUCERS:
            result.add(node.name)
            continue
        uses = []
        for tensor in node.outputs:
            if id(tensor) in outputs:
                uses.append(False)
            for consumer in tensor.outputs:
                slots = [i for i, t in enumerate(consumer.inputs) if t is tensor]
                shape_slot = all(i in SHAPE_INPUTS.get(consumer.op, ()) for i in slots)
                uses.append(shape_slot or consumer.name in result)
        if uses and all(uses):
            result.add(node.name)
    return result


def matches(node: gs.Node, op_types: Iterable[str], patterns: Sequence[str]) -> bool:
    """Does ``node`` fall under an exclusion: its op type listed, or its name matching one of
    the regexes (``re.search``: anywhere in the name)."""
    return node.op in set(op_types) or any(re.search(p, node.name) for p in patterns)


# -- the opset ------------------------------------------------------------------------------


def require_opset(graph: gs.Graph, version: int) -> None:
    """Raise the default-domain opset to at least ``version``. Each op used here keeps its
    meaning across the versions crossed (later versions only add types or attributes)."""
    if graph.opset < version:
        set_default_opset(graph, version)


def raise_for(
    graph: gs.Graph, version: int, purpose: str = "Q/DQ of this type"
) -> tuple[gs.Graph, dict] | tuple[None, str]:
    """The graph at default-domain opset ``version`` (local functions' imports too), and how it
    got there; or None and why it cannot (``purpose`` says what needs the opset).

    First as the fusions do (``raise_opset``: the declared opset moves when no node changes
    meaning on the way, ``graph`` itself is returned); else, for older models (opset < 13,
    Paddle's exports) or ops whose meaning moved, ONNX's version converter rewrites the nodes
    that changed into a new graph (its new nodes unnamed: see ``name_nodes``). The converter
    knows no local functions and needs the weights in memory, so a model with either is left
    unchanged."""
    current = opset(graph)
    why = raise_opset(graph, version)
    if why is None:
        return graph, {"from": current, "to": version, "by": "opset import"}
    cannot = f"{purpose} need opset {version} and {why}"
    if graph.functions:
        return None, f"{cannot}; onnx.version_converter cannot convert its local functions"
    if any(isinstance(c._values, ExternalValues) for c in constants(graph)):
        return None, (
            f"{cannot}; its weights are on disk: convert it first "
            f"(onnx.version_converter.convert_version(model, {version}))"
        )
    try:
        converted = onnx.version_converter.convert_version(export_model(graph), version)
    except Exception as error:  # onnx's C++ adapters raise assorted types
        return None, f"{cannot}, and onnx.version_converter failed: {error}"
    return import_graph(converted), {"from": current, "to": version, "by": "onnx.version_converter"}
