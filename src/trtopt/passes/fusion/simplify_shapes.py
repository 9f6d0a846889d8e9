"""``simplify-shapes``: Shape->Gather->Unsqueeze->Concat->Reshape chains -> a constant shape."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..base import PassContext
from ..folding import fold
from ..graph_clean import prune, sort
from ..graph_shapes import invalidate_shapes
from ..registry import register_pass
from .base import Fusion
from .cse import redirect
from .edit import const, replace_root
from .pattern import Bindings, Const, Match, OneOf, Op, Opt, Var, constant_value, match_tensor

FOLD_LIMIT = 1 << 20  # bytes: shape arithmetic is tiny; never grow the model while folding it

_SHAPE = Op("Shape", Var("src"), name="shape", shared=True)
PATTERN = OneOf(
    Op(
        "Reshape", Var("x"), Op("Concat", variadic=True, name="concat", shared=True), name="reshape"
    ),
    Op("Gather", _SHAPE, Const("index"), name="gather"),
    _SHAPE,
)
# One piece of a computed target shape: dims read from some tensor's shape, or constants.
PIECE = OneOf(
    Op("Unsqueeze", Op("Gather", _SHAPE, Const("index"), shared=True), Opt(Const()), shared=True),
    Op("Gather", _SHAPE, Const("index"), shared=True),
    Op("Slice", _SHAPE, Const("start"), Const("end"), Opt(Const("axes")), Opt(Const("steps"))),
    _SHAPE,
    Const("value"),
)


@register_pass("simplify-shapes")
class SimplifyShapes(Fusion):
    """Turn Shape->Gather->Unsqueeze->Concat->Reshape targets into constants (any opset).

    A Reshape target becomes a constant when every dim is known: copied from the same position
    of the Reshape input (written 0) or static in the computed shapes. A Shape (or Gather of a
    Shape) whose dims are static becomes a constant, and the constant subgraphs that leave are
    folded. Shapes are inferred from the graph, never taken from the model's declarations."""

    pattern = PATTERN

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        graph = super().run(graph, ctx)
        if self.rewrites:
            fold_small_constants(graph)
        return graph

    def _target(self, match: Match) -> list[int] | str:
        """The constant target shape (allowzero=0 semantics), or why there is none."""
        if int(match["concat"].attrs.get("axis", 0)) not in (0, -1):
            return "Concat is not along axis 0"
        target: list[int | None] = []  # None: copied from the same position of the input
        for piece in match["concat"].inputs:
            found = match_tensor(PIECE, piece)
            if isinstance(found, str):
                return f"target piece '{piece.name}': {found}"
            values = self._piece(found, match["x"], len(target))
            if isinstance(values, str):
                return values
            target += values
        if sum(1 for d in target if d == -1) > 1:
            return "more than one -1 in the target"
        if int(match["reshape"].attrs.get("allowzero", 0)) and 0 in target:
            return "Reshape has allowzero=1 and a literal 0 in its target"
        # Copies are written as 0 under allowzero=0; with no literal 0 left that is the same.
        return [0 if d is None else d for d in target]

    def _shape_output(self, shape_node: gs.Node, src: gs.Tensor) -> list[tuple[int, object]] | str:
        """(axis of src, its computed dim) for each element a Shape node outputs."""
        dims = self.shape(src)
        if dims is None:
            return f"rank of '{src.name}' is unknown"
        start, end = int(shape_node.attrs.get("start", 0)), shape_node.attrs.get("end")
        axes = list(range(len(dims)))[slice(start, None if end is None else int(end))]
        return [(axis, dims[axis]) for axis in axes]

    def _piece(self, found: Bindings, x: gs.Tensor, position: int) -> list[int | None] | str:
        if "value" in found:
            return [int(v) for v in _value(found["value"]).reshape(-1)]
        src = found["src"]
        elements = self._shape_output(found["shape"], src)
        if isinstance(elements, str):
            return elements
        if "index" in found:
            n = len(elements)
            indices = _value(found["index"]).reshape(-1)
            if any(not -n <= int(i) < n for i in indices):
                return "Gather index out of range"
            elements = [elements[int(i) % n] for i in indices]
        elif "start" in found:
            steps = _value(found["steps"]).reshape(-1) if "steps" in found else [1]
            if any(int(s) != 1 for s in steps):
                return "Slice of a shape with steps"
            start = int(_value(found["start"]).reshape(-1)[0])
            end = int(_value(found["end"]).reshape(-1)[0])
            elements = elements[slice(start, end)]
        out: list[int | None] = []
        x_dims = self.shape(x) or []
        for offset, (axis, dim) in enumerate(elements):
            at = position + offset
            same = src is x or (at < len(x_dims) and isinstance(dim, str) and x_dims[at] == dim)
            if same and axis == at:
                out.append(None)  # Reshape copies this dim from its input
            elif isinstance(dim, int):
                out.append(int(dim))
            else:
                return f"dim {axis} of '{src.name}' is dynamic and not copied in place"
        return out

    def _static(self, match: Match, graph: gs.Graph) -> np.ndarray | str:
        """The value of a Shape (or Gather of a Shape) whose dims are all static."""
        elements = self._shape_output(match["shape"], match["src"])
        if isinstance(elements, str):
            return elements
        dims = [d for _, d in elements]
        values = np.array([d if isinstance(d, int) else -1 for d in dims], dtype=np.int64)
        if "index" in match:
            index = _value(match["index"]).astype(np.int64)
            if np.any(index >= len(dims)) or np.any(index < -len(dims)):
                return "Gather index out of range"
            values = values[index]
        if np.any(values < 0):
            return f"'{match['src'].name}' has dynamic dims {dims}"
        if any(match.root.outputs[0] is t for t in graph.outputs):
            return "the result is a graph output"
        return values

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        found = self._target(match) if "reshape" in match else self._static(match, graph)
        return found if isinstance(found, str) else None

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        if "reshape" not in match:
            values = self._static(match, graph)
            assert not isinstance(values, str)
            result = match.root.outputs[0]
            redirect(result, const(graph, f"{result.name}_value", values))
            return
        target = self._target(match)
        assert not isinstance(target, str)
        reshape = match["reshape"]
        shape = const(graph, f"{reshape.name}_shape", np.array(target, dtype=np.int64))
        attrs = {k: v for k, v in reshape.attrs.items() if k != "allowzero"}
        replace_root(graph, match, "Reshape", [match["x"], shape], attrs)


def fold_small_constants(graph: gs.Graph) -> None:
    """Evaluate what became constant (Unsqueeze, Concat, Cast of new constants...), up to
    FOLD_LIMIT per tensor. Only constant subgraphs are evaluated: the graph's declared
    shapes are never trusted."""
    fold(graph, FOLD_LIMIT)
    sort(prune(graph))
    invalidate_shapes(graph)


def _value(tensor: gs.Tensor) -> np.ndarray:
    values = constant_value(tensor)
    assert values is not None
    return values
