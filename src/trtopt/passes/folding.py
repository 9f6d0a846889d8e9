"""Constant folding that is sound on the whole ONNX IR: which nodes can be evaluated ahead of
time, evaluating them in one ONNX Runtime session, and Shape nodes from computed shapes.

Written here rather than taken from onnx-graphsurgeon's ``fold_constants`` (0.6), which ignores
Shape's ``start``/``end``, folds shapes from the dims a model declares, crashes on sequence and
optional values, and flattens If branches that read outer-scope names out of order. This folds
only main-graph nodes of the default domain whose inputs are all known tensors; a node with a
subgraph, a random op or a non-tensor value is left as it is.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from ..graph_io import export_model, nbytes, peek

log = logging.getLogger("trtopt.passes")

DEFAULT_DOMAINS = (None, "", "ai.onnx")
# Ops whose outputs are not a function of their inputs, or that are cleanup's business.
UNFOLDABLE = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
    }
)
# ONNX Runtime hands these back as numpy arrays that keep their ONNX type.
_FOLDABLE_DTYPES = frozenset("biuf?")
FEED_BYTES = 4096  # constants above this reach ONNX Runtime as fed arrays


def _known(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant) or tensor.name == ""


def _has_subgraph(node: gs.Node) -> bool:
    return any(isinstance(v, gs.Graph) for v in node.attrs.values())


def foldable(node: gs.Node, known: set[int]) -> bool:
    """Whether ``node`` can be evaluated now: a deterministic default-domain op with no
    subgraph, every input known (``known`` holds the ids of tensors folding will produce)."""
    return (
        node.domain in DEFAULT_DOMAINS
        and node.op not in UNFOLDABLE
        and not _has_subgraph(node)
        and all(_known(t) or id(t) in known for t in node.inputs)
        and all(t.type == "tensor_type" for t in node.outputs if isinstance(t, gs.Variable))
    )


def shape_values(node: gs.Node, dims: list | None) -> np.ndarray | None:
    """What a Shape node outputs when its input's computed ``dims`` are all static, with the
    ``start``/``end`` attributes applied (opset 15); None otherwise."""
    if dims is None:
        return None
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    picked = dims[slice(int(start), None if end is None else int(end))]
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in picked):
        return None
    return np.array(picked, dtype=np.int64)


def fold_shapes(graph: gs.Graph, shapes: dict[str, list | None]) -> int:
    """Replace each main-graph Shape whose (sliced) dims are all static by a constant; returns
    how many. ``shapes`` must be computed from the graph, never the model's declarations."""
    outputs = {id(t) for t in graph.outputs}
    folded = 0
    for node in graph.nodes:
        if node.op != "Shape" or node.domain not in DEFAULT_DOMAINS or not node.outputs:
            continue
        result = node.outputs[0]
        source = node.inputs[0]
        dims = list(source.shape) if isinstance(source, gs.Constant) else shapes.get(source.name)
        values = shape_values(node, dims)
        if values is None or id(result) in outputs:
            continue
        result.to_constant(values)
        node.outputs.clear()
        folded += 1
    return folded


def _evaluate(graph: gs.Graph, nodes: list[gs.Node], wanted: list[gs.Tensor]) -> list:
    """Run ``nodes`` (whose inputs are all constants or produced among them) in one ONNX
    Runtime session; the values of ``wanted`` in order. Large constants are fed as arrays,
    never serialized into the session's model."""
    import onnxruntime as ort

    copy = graph.copy()  # tensors are copied, constant values shared
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    copy.nodes = [copy.nodes[position[id(n)]] for n in nodes]
    tensors = copy.tensors()
    copy.inputs, copy.outputs = [], [tensors[t.name] for t in wanted]
    feeds = {}
    for tensor in copy.tensors().values():
        if isinstance(tensor, gs.Constant) and nbytes(tensor) > FEED_BYTES:
            values = peek(tensor)
            if values.dtype.kind not in _FOLDABLE_DTYPES:
                continue
            feeds[tensor.name] = values
            tensor.to_variable(dtype=values.dtype, shape=list(values.shape))
            tensor.type = "tensor_type"  # what gs.Variable() sets and to_variable() does not
            copy.inputs.append(tensor)
    model = export_model(copy)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a node it cannot fold is simply left
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run([t.name for t in wanted], feeds)


def fold(graph: gs.Graph, size_threshold: int | None) -> int:
    """Evaluate every foldable node of the main graph and replace each of its outputs that
    something else reads by a constant (none larger than ``size_threshold`` bytes). Returns
    how many tensors became constants. Where ONNX Runtime cannot run the whole constant
    subgraph at once, nodes are tried one at a time and what fails stays."""
    known: set[int] = set()
    chosen: list[gs.Node] = []
    for node in graph.nodes:
        if node.outputs and foldable(node, known):
            chosen.append(node)
            known.update(id(t) for t in node.outputs)
    if not chosen:
        return 0
    inside = {id(n) for n in chosen}
    graph_outputs = {id(t) for t in graph.outputs}
    wanted = [
        t
        for n in chosen
        for t in n.outputs
        if t.name
        and id(t) not in graph_outputs
        and any(id(consumer) not in inside for consumer in t.outputs)
    ]
    if not wanted:
        return 0
    try:
        values = _evaluate(graph, chosen, wanted)
    except Exception as error:  # an op ONNX Runtime cannot run ahead of time
        log.debug("folding node by node: %s", error)
        return _fold_one_at_a_time(graph, chosen, size_threshold)
    return _replace(zip(wanted, values), size_threshold)


def _replace(results, size_threshold: int | None) -> int:
    folded = 0
    for tensor, value in results:
        # A sequence comes back as a list, an optional as None or its element: never folded.
        if not isinstance(value, np.ndarray) or value.dtype.kind not in _FOLDABLE_DTYPES:
            continue
        if size_threshold is not None and value.nbytes > size_threshold:
            continue
        for producer in list(tensor.inputs):
            producer.outputs[producer.outputs.index(tensor)] = gs.Variable(
                f"{tensor.name}__folded", dtype=tensor.dtype
            )
        tensor.to_constant(value)
        folded += 1
    return folded


def _fold_one_at_a_time(graph: gs.Graph, chosen: list[gs.Node], size_threshold) -> int:
    folded = 0
    for node in chosen:
        if not all(_known(t) for t in node.inputs):
            continue  # an input that could not be folded
        wanted = [t for t in node.outputs if t.name]
        try:
            values = _evaluate(graph, [node], wanted)
        except Exception as error:
            log.debug("not folding %s '%s': %s", node.op, node.name, error)
            continue
        folded += _replace(zip(wanted, values), size_threshold)
    return folded
