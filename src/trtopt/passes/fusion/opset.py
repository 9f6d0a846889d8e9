"""The model's opset, and raising it where no node changes meaning (for fusions into newer
ops)."""

from __future__ import annotations

from collections.abc import Iterator

import onnx
import onnx_graphsurgeon as gs


def opset(graph: gs.Graph) -> int:
    """The model's default-domain opset."""
    for entry in graph.import_domains or []:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return int(graph.opset)


# Ops whose meaning changes when a model's opset is raised across the given version: attribute
# defaults or values that differ, or attributes that became inputs (read from the ONNX changelog).
_CHANGES_AT = {
    16: {"RoiAlign"},
    18: {f"Reduce{r}" for r in ("L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod")}
    | {"ReduceSumSquare"},
    20: {"GridSample", "DFT"},
}


def raise_opset(graph: gs.Graph, target: int) -> str | None:
    """Raise the default-domain opset to ``target`` when that changes no node's meaning;
    returns why not otherwise. Only opsets from 13 on are raised (older ones changed too much)."""
    current = opset(graph)
    if current >= target:
        return None
    if current < 13:
        return f"the model's opset {current} is below 13"
    changed = set().union(*(ops for v, ops in _CHANGES_AT.items() if current < v <= target))
    bodies = [graph, *(graph.functions or [])]
    for node in (node for body in bodies for node in _all_nodes(body)):
        if node.domain in (None, "", "ai.onnx") and node.op in changed:
            return f"'{node.name}' ({node.op}) changes meaning between opset {current} and {target}"
    # Local functions import the model's default opset too (ONNX Runtime refuses a function
    # whose import differs from the model's: "FunctionOp imports version 18 whereas model
    # imports version 20"). New entries: the imported ones are the caller's model's own.
    for body in bodies:
        set_default_opset(body, target)
    return None


DEFAULT = ("", "ai.onnx")
"""The default domain's names."""


def set_default_opset(graph: gs.Graph, version: int) -> None:
    """Set the default-domain opset of ``graph`` (a model's graph or a local function) to
    ``version``, in ``import_domains`` too, which graphsurgeon exports when present. The
    entries are replaced, never changed: graphsurgeon shares them with the ModelProto the
    graph was imported from, which must not change under its owner."""
    graph.opset = version
    if graph.import_domains is not None:
        graph.import_domains = [
            onnx.helper.make_opsetid(e.domain, version if e.domain in DEFAULT else e.version)
            for e in graph.import_domains
        ]


def _all_nodes(graph: gs.Graph) -> Iterator[gs.Node]:
    for node in graph.nodes:
        yield node
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                yield from _all_nodes(value)
