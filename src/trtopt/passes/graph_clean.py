"""Dead-node removal and topological sorting that keep subgraphs and functions valid, and
graphsurgeon quiet.

graphsurgeon's (0.6) ``cleanup(remove_unused_node_outputs=True)`` deletes an unused output from
a node's output list, which moves the outputs after it into its place: an LSTM whose ``Y`` is
unused then writes ``Y_h`` (one rank more) where ``Y`` was, and a Split loses a part. Its
``remove_unused_graph_inputs`` also reaches Loop and Scan bodies and local functions, whose
inputs are positional. Here an unused output is blanked (the empty name ONNX gives an omitted
optional output) only where the op's schema says it is optional, and only the model's own
inputs may be removed.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
import onnx_graphsurgeon as gs

from ..graph_io import quiet

_OPTIONAL = onnx.defs.OpSchema.FormalParameterOption.Optional


def scopes(graph: gs.Graph) -> Iterator[gs.Graph]:
    """Every graph a model holds: its local functions, the subgraphs of every node (If, Loop and
    Scan bodies, nested), deepest first, then ``graph`` itself."""
    for function in graph.functions:
        yield from _nested(function)
    yield from _nested(graph)


def _nested(graph: gs.Graph) -> Iterator[gs.Graph]:
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                yield from _nested(value)
    yield graph


def prune(graph: gs.Graph, remove_unused_graph_inputs: bool = False) -> gs.Graph:
    """Remove nodes that no output depends on, in every scope (inner scopes first, so an outer
    node read only by dead inner ones goes too), and blank unused optional outputs.
    ``remove_unused_graph_inputs`` removes the model's unread inputs (never a body's or a
    function's: those are positional)."""
    version = _opset(graph)
    functions = {(f.domain, f.name) for f in graph.functions}
    with quiet():
        for scope in scopes(graph):
            scope.cleanup(
                recurse_subgraphs=False,
                recurse_functions=False,
                remove_unused_graph_inputs=remove_unused_graph_inputs and scope is graph,
            )
            _blank_unused_outputs(scope, version, functions)
    return graph


def sort(graph: gs.Graph) -> gs.Graph:
    """Topologically sort every scope's nodes. The list of functions keeps its order:
    graphsurgeon's (0.6) sort of it recurses without end (RecursionError) when the main graph
    holds a subgraph (its ``get_used_funcs`` walks the main graph's subgraphs again at every
    level), and ONNX does not order local functions."""
    with quiet():
        graph.toposort(mode="nodes")
    return graph


def _blank_unused_outputs(scope: gs.Graph, version: int, functions: set[tuple]) -> None:
    """Replace each output nothing reads by an empty tensor where the op declares it optional,
    then drop trailing empty outputs."""
    kept = {id(t) for t in scope.outputs}
    for node in scope.nodes:
        local = (node.domain or "", node.op) in functions
        schema = None if local else _schema(node, version)
        if schema is None:
            continue
        formals = schema.outputs
        for index, tensor in enumerate(list(node.outputs)):
            if tensor.is_empty() or tensor.outputs or id(tensor) in kept:
                continue
            if index < len(formals) and formals[index].option == _OPTIONAL:
                node.outputs[index] = gs.Variable.empty()
        while node.outputs and node.outputs[-1].is_empty():
            node.outputs.pop()


def _opset(graph: gs.Graph) -> int:
    for entry in graph.import_domains or []:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return int(graph.opset)


def _schema(node: gs.Node, version: int) -> onnx.defs.OpSchema | None:
    domain = node.domain or ""
    if domain not in ("", "ai.onnx"):
        return None  # a function call or another domain's op: its outputs are not ours to drop
    try:
        return onnx.defs.get_schema(node.op, version, "")
    except onnx.defs.SchemaError:
        return None
