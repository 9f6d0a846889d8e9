"""The declarative pattern matcher every fusion uses.

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

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ...graph_io import peek

COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "And", "Or", "Equal"})


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(tensor, gs.Constant):
        return peek(tensor)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return peek(value)
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
