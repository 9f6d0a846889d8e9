"""The graph edits a fusion makes: new uniquely named tensors, and a new node in place of a
match."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..cleanup import bypass
from ..graph_memo import memo
from .pattern import Match, constant_value


def const(graph: gs.Graph, base: str, values: np.ndarray) -> gs.Constant:
    """A new constant with a name unique in ``graph`` (derived from ``base``)."""
    names = _names(graph)
    name, i = f"{base}", 0
    while name in names:
        i += 1
        name = f"{base}_{i}"
    names.add(name)
    return gs.Constant(name, np.array(values, order="C"))  # (ascontiguousarray makes 0-d 1-d)


def variable(graph: gs.Graph, base: str, dtype=None) -> gs.Variable:
    """A new intermediate tensor with a name unique in ``graph``."""
    names = _names(graph)
    name, i = base, 0
    while name in names:
        i += 1
        name = f"{base}_{i}"
    names.add(name)
    return gs.Variable(name, dtype=dtype)


def _names(graph: gs.Graph) -> set[str]:
    remembered = memo(graph)
    if remembered.names is None:
        remembered.names = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
    return remembered.names


def replace_root(
    graph: gs.Graph,
    match: Match,
    op: str,
    inputs: list[gs.Tensor],
    attrs: dict | None = None,
    name: str | None = None,
) -> gs.Node:
    """Put a new ``op`` node in place of the match: it writes the root's output tensor (so its
    name, consumers and graph-output status stay) and the matched nodes become dead."""
    output = match.root.outputs[0]
    match.root.outputs.clear()
    node = gs.Node(op, name=name or match.root.name, attrs=attrs or {}, inputs=inputs)
    node.outputs = [output]
    graph.nodes.append(node)
    return node


def bypass_refusal(graph: gs.Graph, source: gs.Tensor, result: gs.Tensor) -> str | None:
    """Why ``result`` cannot simply be replaced by ``source``: both are graph boundaries."""
    boundary = {id(t) for t in (*graph.inputs, *graph.outputs)}
    is_output = any(result is t for t in graph.outputs)
    if is_output and (id(source) in boundary or constant_value(source) is not None):
        return "it would rename a graph input or output"
    return None


def replace_by(graph: gs.Graph, match: Match, source: gs.Tensor) -> None:
    """Make the match's result be ``source`` itself (an identity), keeping graph output names."""
    node = replace_root(graph, match, "Identity", [source])
    bypass(graph, node)
