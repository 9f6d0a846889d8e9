"""What passes remember about a graph between edits (its computed shapes, the names in use),
kept beside the graph rather than written into it: ``gs.Graph`` is onnx-graphsurgeon's, and
attributes of trtopt's own on it would be state nobody looks for there."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import onnx_graphsurgeon as gs


@dataclass
class Memo:
    """One graph's remembered facts; a field is None until computed, and reset by edits."""

    shapes: dict[str, Any] | None = None
    """Shapes as shape inference computes them (``graph_shapes.computed_shapes``)."""
    dtypes: dict[str, Any] | None = None
    names: set[str] | None = None
    """Every tensor and node name, for making new unique ones."""
    shared_shapes: bool = False
    """Set while ``fuse`` runs its members: they share computed shapes, each invalidating
    them on change, rather than each computing them anew."""


_MEMOS: dict[int, tuple[weakref.ref, Memo]] = {}


def memo(graph: gs.Graph) -> Memo:
    """The memo of ``graph`` (a new one for a graph not seen before); it goes with the graph."""
    key = id(graph)
    found = _MEMOS.get(key)
    if found is not None and found[0]() is graph:
        return found[1]
    entry = Memo()
    _MEMOS[key] = (weakref.ref(graph, lambda _: _MEMOS.pop(key, None)), entry)
    return entry
