"""The declarative pattern matcher every fusion uses, and the ``Fusion`` pass base class.

A pattern describes the tensor a fusion rewrites, from its producer upwards:

    BN = Op("BatchNormalization",
            Op("Conv", Var("x"), Const("w"), Opt(Const("b")), name="conv"),
            Const("scale"), Const("bias"), Const("mean"), Const("var"), name="bn")

``Var`` matches any tensor, ``Const`` a constant one (an initializer or a Constant node's
output), ``Op`` a tensor produced by a node of that type, ``OneOf`` alternatives, ``Opt`` an
optional trailing input. A name bound twice must bind the same tensor (or node), which is how
a pattern says "x feeds both branches". Add and Mul inputs match in either order. An
intermediate node may feed nothing outside the match (no extra consumer, not a graph output),
unless it is declared ``shared=True``. A failed match says why, so the log answers "why did this
not fuse?".

Written here rather than taken from onnx-graphsurgeon's ``GraphPattern``: that matcher has no
constants with values, no commutative inputs and no refusal reasons, which are most of what a
fusion needs to say.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..base import Pass, PassContext
from ..cleanup import bypass

log = logging.getLogger("trtopt.passes.fusion")

COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "And", "Or", "Equal"})
MAX_ROUNDS = 8


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def is_absent(tensor: gs.Tensor) -> bool:
    """An omitted optional input (graphsurgeon keeps it as a nameless variable)."""
    return isinstance(tensor, gs.Variable) and not tensor.name


class Bindings(dict):
    """Pattern name -> gs.Node (for Op) or gs.Tensor (for Var/Const)."""


@dataclass
class Trace:
    """The most advanced failure of one match attempt: the refusal reason to log."""

    depth: int = -1
    reason: str = "no match"

    def fail(self, bindings: Bindings, reason: str) -> None:
        if len(bindings) >= self.depth:
            self.depth, self.reason = len(bindings), reason


def _bind(bindings: Bindings, name: str | None, value: object) -> Bindings | None:
    if name is None:
        return bindings
    if name in bindings:
        return bindings if bindings[name] is value else None
    new = Bindings(bindings)
    new[name] = value
    return new


class Pattern:
    """A tensor pattern; ``match`` yields every consistent set of bindings."""

    name: str | None = None

    def match(self, tensor: gs.Tensor, bindings: Bindings, trace: Trace) -> Iterator[Bindings]:
        raise NotImplementedError


@dataclass
class Var(Pattern):
    """Any tensor (a graph input, an activation, a constant)."""

    name: str | None = None

    def match(self, tensor, bindings, trace):
        bound = _bind(bindings, self.name, tensor)
        if bound is None:
            trace.fail(bindings, f"'{tensor.name}' is not the same tensor as '{self.name}'")
            return
        yield bound


@dataclass
class Const(Pattern):
    """A constant tensor; ``value`` (a float) also requires every element to equal it."""

    name: str | None = None
    value: float | None = None
    rtol: float = 1e-3

    def match(self, tensor, bindings, trace):
        values = constant_value(tensor)
        if values is None:
            trace.fail(bindings, f"'{tensor.name}' ({self.name or 'input'}) is not a constant")
            return
        if self.value is not None and (
            values.size == 0 or not np.allclose(values, self.value, rtol=self.rtol, atol=0)
        ):
            trace.fail(bindings, f"constant '{tensor.name}' is not {self.value}")
            return
        bound = _bind(bindings, self.name, tensor)
        if bound is not None:
            yield bound


@dataclass
class Opt(Pattern):
    """An optional trailing input of an Op: matches the pattern, or the input's absence."""

    pattern: Pattern


@dataclass(init=False)
class OneOf(Pattern):
    """The first of several alternative patterns that matches (all are tried, in order)."""

    options: tuple[Pattern, ...]

    def __init__(self, *options: Pattern) -> None:
        self.options = options

    def match(self, tensor, bindings, trace):
        for option in self.options:
            yield from option.match(tensor, bindings, trace)


@dataclass(init=False)
class Op(Pattern):
    """A tensor produced by a node whose op type is ``op`` (or one of a tuple of types)."""

    ops: tuple[str, ...]
    inputs: tuple[Pattern, ...]
    name: str | None
    shared: bool
    variadic: bool

    def __init__(
        self,
        op: str | tuple[str, ...],
        *inputs: Pattern,
        name: str | None = None,
        shared: bool = False,
        variadic: bool = False,
    ) -> None:
        self.ops = (op,) if isinstance(op, str) else tuple(op)
        self.inputs, self.name, self.shared, self.variadic = inputs, name, shared, variadic

    def match(self, tensor, bindings, trace):
        producers = tensor.inputs
        if len(producers) != 1 or producers[0].op not in self.ops:
            found = producers[0].op if producers else "a graph input or constant"
            trace.fail(bindings, f"'{tensor.name}' comes from {found}, not {'/'.join(self.ops)}")
            return
        node = producers[0]
        if node.outputs[0] is not tensor:
            trace.fail(bindings, f"'{tensor.name}' is not the first output of '{node.name}'")
            return
        # Unnamed nodes are bound under their id, so every matched node is known to the match.
        bound = _bind(bindings, self.name or f"#{id(node)}", node)
        if bound is None:
            trace.fail(bindings, f"'{node.name}' is not the node bound as '{self.name}'")
            return
        if self.shared:
            bound = _bind(bound, f"~{id(node)}", node)  # marks it as allowed to feed others
            assert bound is not None
        actual = [t for t in node.inputs]
        while actual and is_absent(actual[-1]):
            actual.pop()
        required = [p for p in self.inputs if not isinstance(p, Opt)]
        if len(actual) < len(required) or (len(actual) > len(self.inputs) and not self.variadic):
            trace.fail(bound, f"'{node.name}' has {len(actual)} inputs")
            return
        orders = [self.inputs]
        if node.op in COMMUTATIVE and len(self.inputs) == 2:
            orders.append(self.inputs[::-1])
        for order in orders:
            yield from _match_inputs(order, actual, bound, trace)


def _match_inputs(
    patterns: tuple[Pattern, ...], tensors: list[gs.Tensor], bindings: Bindings, trace: Trace
) -> Iterator[Bindings]:
    if not patterns:
        yield bindings
        return
    first, rest = patterns[0], patterns[1:]
    if isinstance(first, Opt):
        if not tensors or is_absent(tensors[0]):
            yield from _match_inputs(rest, tensors[1:], bindings, trace)
            return
        first = first.pattern
    if not tensors:
        return
    for bound in first.match(tensors[0], bindings, trace):
        yield from _match_inputs(rest, tensors[1:], bound, trace)


@dataclass
class Match:
    """A successful match: the bound nodes and tensors by pattern name, and the root node."""

    root: gs.Node
    bindings: Bindings

    def __getitem__(self, name: str):
        return self.bindings[name]

    def __contains__(self, name: str) -> bool:
        return name in self.bindings

    def value(self, name: str) -> np.ndarray:
        """The value of a constant bound as ``name``."""
        values = constant_value(self.bindings[name])
        assert values is not None, name
        return values

    @property
    def nodes(self) -> list[gs.Node]:
        """Every matched node, the root included."""
        found = {id(v): v for v in self.bindings.values() if isinstance(v, gs.Node)}
        found.setdefault(id(self.root), self.root)
        return list(found.values())

    @property
    def shared(self) -> set[int]:
        """Ids of the matched nodes that may feed nodes outside the match (they stay)."""
        return {int(k[1:]) for k in self.bindings if k.startswith("~")}


def root_ops(pattern: Pattern) -> Iterator[str]:
    """The op types a pattern's root node can have."""
    if isinstance(pattern, Op):
        yield from pattern.ops
    elif isinstance(pattern, OneOf):
        for option in pattern.options:
            yield from root_ops(option)


def find(pattern: Op | OneOf, node: gs.Node, graph_outputs: set[int]) -> Match | str:
    """Match ``pattern`` rooted at ``node``'s first output: a Match, or the refusal reason."""
    trace = Trace()
    for bindings in pattern.match(node.outputs[0], Bindings(), trace):
        match = Match(node, bindings)
        reason = _escapes(match, graph_outputs)
        if reason is None:
            return match
        trace.fail(Bindings(), reason)
    return trace.reason


def match_tensor(pattern: Pattern, tensor: gs.Tensor) -> Bindings | str:
    """Match a sub-pattern on one tensor without the extra-consumer rule (for parts that are
    meant to be shared, such as shape computations); the bindings or the refusal reason."""
    trace = Trace()
    for bindings in pattern.match(tensor, Bindings(), trace):
        return bindings
    return trace.reason


def _escapes(match: Match, graph_outputs: set[int]) -> str | None:
    """Why an intermediate result is needed outside the match, if it is."""
    nodes, shared = match.nodes, match.shared
    inside = {id(n) for n in nodes}
    for node in nodes:
        if node is match.root:
            continue
        for index, out in enumerate(node.outputs):
            if id(node) in shared and index == 0:
                continue
            if id(out) in graph_outputs:
                return f"intermediate '{out.name}' is a graph output"
            extra = [c for c in out.outputs if id(c) not in inside]
            if extra:
                return f"intermediate '{out.name}' is also read by '{extra[0].name}'"
    for out in match.root.outputs[1:]:
        if out.outputs or id(out) in graph_outputs:
            return f"'{match.root.name}' output '{out.name}' is used"
    return None


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
    cache = graph.__dict__.setdefault("_trtopt_names", None)
    if cache is None:
        cache = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
        graph.__dict__["_trtopt_names"] = cache
    return cache


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
    for node in _all_nodes(graph):
        if node.domain in (None, "", "ai.onnx") and node.op in changed:
            return f"'{node.name}' ({node.op}) changes meaning between opset {current} and {target}"
    graph.opset = target
    for entry in graph.import_domains or []:
        if entry.domain in ("", "ai.onnx"):
            entry.version = target
    return None


def _all_nodes(graph: gs.Graph) -> Iterator[gs.Node]:
    for node in graph.nodes:
        yield node
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                yield from _all_nodes(value)


def _infer(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """ONNX Runtime's symbolic shape inference, which keeps dynamic dims named through shape
    arithmetic (so equal dims are seen as equal); ONNX's own inference where it fails."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
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
    model = gs.export_onnx(copy, do_type_check=False)
    del model.graph.value_info[:]
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    return model


def computed_shapes(
    graph: gs.Graph,
) -> tuple[dict[str, list[int | str | None] | None], dict[str, np.dtype]]:
    """Shapes as the graph computes them (ONNX shape inference with data propagation), ignoring
    the shapes the model declares for its outputs and intermediates, which exporters get wrong."""
    model = _light_model(graph)
    inferred = _infer(model)
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


SHAPE_CACHE = "_trtopt_computed_shapes"
# Set while ``fuse`` runs its members: they share computed shapes, each invalidating on change.
SHARED_SHAPES = "_trtopt_shared_shapes"


def invalidate_shapes(graph: gs.Graph) -> None:
    """Forget the computed shapes of ``graph``: call after any change to it."""
    graph.__dict__.pop(SHAPE_CACHE, None)


@dataclass
class Refusal:
    """A root node a fusion looked at and did not rewrite, and why."""

    node: str
    reason: str


class Fusion(Pass):
    """Base of every fusion pass: set ``pattern`` (and ``min_opset``); implement ``rewrite``
    and, for conditions the pattern cannot say, ``check`` (returns why not, or None)."""

    pattern: ClassVar[Op | OneOf]
    min_opset: ClassVar[int] = 1

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.refusals: list[Refusal] = []
        self.rewrites = 0

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        return None

    def shape(self, tensor: gs.Tensor) -> list[int | str | None] | None:
        """The shape ``tensor`` has as the graph computes it (inferred once per round, on first
        use), or None when unknown. Constants give their own shape."""
        values = constant_value(tensor)
        if values is not None:
            return list(values.shape)
        return self._computed()[0].get(tensor.name)

    def _computed(self) -> tuple[dict, dict]:
        cache = self._graph.__dict__.setdefault(SHAPE_CACHE, {})
        if "shapes" not in cache:
            cache["shapes"], cache["dtypes"] = computed_shapes(self._graph)
        return cache["shapes"], cache["dtypes"]

    def dtype(self, tensor: gs.Tensor) -> np.dtype | None:
        """The element type of ``tensor`` as the graph computes it, or None when unknown."""
        values = constant_value(tensor)
        if values is not None:
            return values.dtype
        found = self._computed()[1].get(tensor.name)
        return np.dtype(found) if found is not None else None

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        raise NotImplementedError

    def prepare(self, graph: gs.Graph, ctx: PassContext) -> str | None:
        """Called once before matching; returns why the whole pass is skipped, if it is."""
        if opset(graph) < self.min_opset:
            return f"needs opset >= {self.min_opset}, the model has {opset(graph)}"
        return None

    @cached_property
    def _ops(self) -> frozenset[str]:
        return frozenset(root_ops(self.pattern))

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        self.refusals, self.rewrites = [], 0
        graph.__dict__.pop("_trtopt_names", None)  # names other passes added since
        if not graph.__dict__.get(SHARED_SHAPES):
            invalidate_shapes(graph)  # another pass may have changed the graph since
        skipped = self.prepare(graph, ctx)
        if skipped:
            ctx.log.info("%s: skipped: %s", self.name, skipped)
            self.refusals.append(Refusal("<graph>", skipped))
            return graph
        for _ in range(MAX_ROUNDS):
            self._graph = graph
            outputs = {id(t) for t in graph.outputs}
            refusals, dead, changed = [], set(), 0
            # Last node first: a pattern rooted further down (layer norm with its scale and bias)
            # is tried before a smaller one inside it (the bare normalization).
            for node in reversed(list(graph.nodes)):
                if node.op not in self._ops or id(node) in dead or not node.outputs:
                    continue
                found = find(self.pattern, node, outputs)
                reason = found if isinstance(found, str) else self.check(found, graph)
                if reason is not None:
                    refusals.append(Refusal(node.name, reason))
                    continue
                if any(id(n) in dead for n in found.nodes):
                    continue
                self.rewrite(found, graph)
                # Shared nodes stay (they feed others), so later matches may use them this round.
                dead.update(id(n) for n in found.nodes if id(n) not in found.shared)
                changed += 1
            self.refusals = refusals
            if not changed:
                break
            self.rewrites += changed
            invalidate_shapes(graph)
            graph.cleanup(remove_unused_node_outputs=True).toposort()
            graph.__dict__.pop("_trtopt_names", None)
        for refusal in self.refusals:
            ctx.log.debug("%s: '%s' not rewritten: %s", self.name, refusal.node, refusal.reason)
        if self.rewrites:
            ctx.log.info("%s: %d rewrite(s)", self.name, self.rewrites)
        return graph
