"""Property-based graph fuzzing: hypothesis builds small valid ONNX models (elementwise, shape,
reduction and matmul chains, with If subgraphs that read outer-scope values and model-local
functions) and every exact pass chain must keep their outputs on ONNX Runtime, run raw
(``verify=False``, so a pass bug is not hidden by the rollback). A failing case shrinks to a
small graph; each bug found this way is committed below as a plain regression test.

``TRTOPT_FUZZ_EXAMPLES=2000 pytest tests/test_graph_fuzz.py`` hunts longer."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import conformance
import trtopt

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
FUNCTION_DOMAIN = "local.fn"
EXAMPLES = int(os.environ.get("TRTOPT_FUZZ_EXAMPLES", "60"))
CHAINS = conformance.chains()


# -- the model builder: every value's shape is tracked, so every model is valid ----------------


@dataclass(frozen=True)
class Value:
    name: str
    shape: tuple[int, ...]


@dataclass
class Scope:
    """One graph being built: the main graph, an If branch or a function body. ``values``
    are the float values ops may read (an inner scope starts with its outer scope's)."""

    values: list[Value]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    allow_initializers: bool = True  # False in a function body, which sees no outer value
    depth: int = 0
    source: str = "x"  # what an If's condition reads: the input, or a function's parameter


@dataclass
class Built:
    model: onnx.ModelProto
    x_shape: tuple[int, ...]
    has_k: bool
    has_if: bool


class Builder:
    def __init__(self, draw: Any, opset: int) -> None:
        self.draw = draw
        self.opset = opset
        self.count = 0
        self.functions: list[onnx.FunctionProto] = []
        self.has_if = False
        self.k: str | None = None  # the int64 input (2,), values 0 or 1

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def node(self, scope: Scope, op: str, inputs: list[str], outputs: int = 1, **attrs) -> list:
        names = [self.name(op.lower() + "_") for _ in range(outputs)]
        domain = attrs.pop("domain", "")
        scope.nodes.append(
            helper.make_node(op, inputs, names, name=self.name("n_"), domain=domain, **attrs)
        )
        return names

    def const(self, scope: Scope, array: np.ndarray) -> str:
        """A constant: an initializer or a Constant node."""
        name = self.name("c_")
        tensor = helper.make_tensor(
            name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape, array.flatten()
        )
        if scope.allow_initializers and self.draw(st.booleans()):
            scope.initializers.append(tensor)
            return name
        scope.nodes.append(
            helper.make_node("Constant", [], [name], name=self.name("n_"), value=tensor)
        )
        return name

    def ints(self, scope: Scope, values: list[int]) -> str:
        return self.const(scope, np.array(values, np.int64))

    def floats(self, shape: tuple[int, ...], low: float = -1.0, high: float = 1.0) -> np.ndarray:
        seed = self.draw(st.integers(0, 2**16))
        return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)

    def axes_input(self, op: str) -> bool:
        """Whether ``op`` takes its axes as an input at this opset."""
        since = {"ReduceSum": 13, "Unsqueeze": 13, "Squeeze": 13}.get(op, 18)
        return self.opset >= since

    def reduce(self, scope, op, value, axes, keepdims) -> str:
        if axes is None:
            return self.node(scope, op, [value], keepdims=keepdims)[0]
        if self.axes_input(op):
            return self.node(scope, op, [value, self.ints(scope, axes)], keepdims=keepdims)[0]
        return self.node(scope, op, [value], axes=axes, keepdims=keepdims)[0]


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _broadcastable(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    try:
        np.broadcast_shapes(a, b)
        return True
    except ValueError:
        return False


# Each op takes (builder, scope, value) and returns the new value, or None when it does not
# apply to that value's shape (the draw then takes another op).


def op_unary(b: Builder, s: Scope, v: Value) -> Value:
    op = b.draw(st.sampled_from(["Relu", "Identity", "Sigmoid", "Tanh", "Neg", "Abs", "Exp"]))
    if op == "Exp":  # of bounded values
        return Value(b.node(s, "Exp", b.node(s, "Tanh", [v.name]))[0], v.shape)
    return Value(b.node(s, op, [v.name])[0], v.shape)


def op_dropout(b: Builder, s: Scope, v: Value) -> Value:
    outputs = b.draw(st.integers(1, 2))
    return Value(b.node(s, "Dropout", [v.name], outputs)[0], v.shape)


def _operand_shape(b: Builder, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A constant's shape that broadcasts with ``shape`` (sometimes widening it)."""
    kind = b.draw(st.sampled_from(["scalar", "last", "same", "ones", "wider"]))
    if kind == "scalar" or not shape:
        return ()
    if kind == "last":
        return shape[-1:]
    if kind == "ones":
        return tuple(1 if b.draw(st.booleans()) else d for d in shape)
    if kind == "wider" and len(shape) < 4:
        return (b.draw(st.integers(1, 3)), *shape)
    return shape


def op_binary_const(b: Builder, s: Scope, v: Value) -> Value:
    op = b.draw(st.sampled_from(["Add", "Mul", "Sub", "Div"]))
    shape = _operand_shape(b, v.shape)
    noop = b.draw(st.booleans())  # x+0, x*1, x-0, x/1 (eliminate-noop-arith)
    if noop:
        array = np.full(shape, 1.0 if op in ("Mul", "Div") else 0.0, np.float32)
    elif op == "Div":  # a nonzero divisor
        array = b.floats(shape, 0.5, 2.0) * np.where(b.floats(shape) < 0, -1, 1).astype(np.float32)
    else:
        array = b.floats(shape)
    c = b.const(s, array)
    first = b.draw(st.booleans()) and op in ("Add", "Mul", "Sub")
    inputs = [c, v.name] if first else [v.name, c]
    return Value(b.node(s, op, inputs)[0], np.broadcast_shapes(v.shape, shape))


def op_binary_values(b: Builder, s: Scope, v: Value) -> Value | None:
    others = [w for w in s.values if _broadcastable(v.shape, w.shape)]
    w = b.draw(st.sampled_from(others))
    op = b.draw(st.sampled_from(["Add", "Mul", "Sub"]))
    return Value(b.node(s, op, [v.name, w.name])[0], np.broadcast_shapes(v.shape, w.shape))


def op_duplicate(b: Builder, s: Scope, v: Value) -> Value:
    """The same subexpression twice (CSE), on one constant or on two equal ones."""
    op = b.draw(st.sampled_from(["Relu", "Sigmoid", "Add", "Mul", "Transpose"]))
    if op in ("Add", "Mul"):
        array = b.floats(v.shape[-1:])
        first = b.const(s, array)
        second = first if b.draw(st.booleans()) else b.const(s, array)
        a = b.node(s, op, [v.name, first])[0]
        c = b.node(s, op, [v.name, second])[0]
    elif op == "Transpose":
        perm = list(reversed(range(len(v.shape))))
        a = b.node(s, op, [v.name], perm=perm)[0]
        c = b.node(s, op, [v.name], perm=perm)[0]
        v = Value(v.name, tuple(reversed(v.shape)))
    else:
        a, c = b.node(s, op, [v.name])[0], b.node(s, op, [v.name])[0]
    combine = b.draw(st.sampled_from(["Add", "Sub", "Mul"]))
    return Value(b.node(s, combine, [a, c])[0], v.shape)


def op_folding(b: Builder, s: Scope, v: Value) -> Value:
    """Constants that fold: (c1 op c2), reshaped or unsqueezed, then applied to v."""
    shape = _operand_shape(b, v.shape)
    c1, c2 = b.const(s, b.floats(shape)), b.const(s, b.floats(shape))
    op = b.draw(st.sampled_from(["Add", "Mul", "Sub"]))
    folded = b.node(s, op, [c1, c2])[0]
    if shape and b.draw(st.booleans()):
        folded = b.node(s, "Reshape", [folded, b.ints(s, [-1])])[0]
        shape = (_numel(shape),)
        if not _broadcastable(v.shape, shape):
            folded = b.node(s, "ReduceSum", [folded], keepdims=1)[0]
            shape = (1,)
    return Value(b.node(s, "Add", [v.name, folded])[0], np.broadcast_shapes(v.shape, shape))


def _factorizations(n: int) -> list[tuple[int, ...]]:
    found = [(n,)]
    for a in range(1, n + 1):
        if n % a == 0:
            found.append((a, n // a))
            for c in range(1, n // a + 1):
                if (n // a) % c == 0:
                    found.append((a, c, n // a // c))
    return found


def op_reshape(b: Builder, s: Scope, v: Value) -> Value:
    target = b.draw(st.sampled_from(_factorizations(_numel(v.shape))))
    spelled = list(target)
    if _numel(target) and b.draw(st.booleans()):  # -1 is ambiguous when empty
        spelled[b.draw(st.integers(0, len(spelled) - 1))] = -1
    if not _numel(target):  # an empty target: its 0 is a 0, not "copy the input's dim"
        out = b.node(s, "Reshape", [v.name, b.ints(s, spelled)], allowzero=1)[0]
        return Value(out, target)
    for i, d in enumerate(target):  # 0 copies the input's dim
        if i < len(v.shape) and v.shape[i] == d and spelled[i] != -1 and b.draw(st.booleans()):
            spelled[i] = 0
    return Value(b.node(s, "Reshape", [v.name, b.ints(s, spelled)])[0], target)


def _shape_of(b: Builder, s: Scope, v: Value, start: int, end: int) -> str:
    """v's dims start:end as an int64 tensor, by Shape(start, end), Slice, Gather, or dim by
    dim as exporters write it (Gather of a scalar index, Unsqueeze, Concat)."""
    how = b.draw(st.sampled_from(["attrs", "slice", "gather", "scalars"]))
    if how == "attrs" and b.opset >= 15:
        return b.node(s, "Shape", [v.name], start=start, end=end)[0]
    shape = b.node(s, "Shape", [v.name])[0]
    if how == "scalars":
        dims = []
        for i in range(start, end):
            dim = b.node(s, "Gather", [shape, b.const(s, np.array(i, np.int64))], axis=0)[0]
            dims.append(b.node(s, "Unsqueeze", [dim, b.ints(s, [0])])[0])
        return dims[0] if len(dims) == 1 else b.node(s, "Concat", dims, axis=0)[0]
    if how == "gather":
        return b.node(s, "Gather", [shape, b.ints(s, list(range(start, end)))], axis=0)[0]
    return b.node(s, "Slice", [shape, b.ints(s, [start]), b.ints(s, [end])])[0]


def op_reshape_computed(b: Builder, s: Scope, v: Value) -> Value | None:
    """Reshape to (v's first dims..., -1), the target computed from v's Shape."""
    if len(v.shape) < 2 or not _numel(v.shape):
        return None
    keep = b.draw(st.integers(1, len(v.shape) - 1))
    head = _shape_of(b, s, v, 0, keep)
    target = b.node(s, "Concat", [head, b.ints(s, [-1])], axis=0)[0]
    shape = (*v.shape[:keep], _numel(v.shape[keep:]))
    return Value(b.node(s, "Reshape", [v.name, target])[0], shape)


def op_transpose(b: Builder, s: Scope, v: Value) -> Value | None:
    if len(v.shape) < 2:
        return None
    perm = b.draw(st.permutations(range(len(v.shape))))
    if b.draw(st.booleans()):  # no perm: reversed
        perm = list(reversed(range(len(v.shape))))
        out = b.node(s, "Transpose", [v.name])[0]
    else:
        out = b.node(s, "Transpose", [v.name], perm=list(perm))[0]
    return Value(out, tuple(v.shape[p] for p in perm))


def op_unsqueeze(b: Builder, s: Scope, v: Value) -> Value | None:
    if len(v.shape) >= 4:
        return None
    rank = len(v.shape) + 1
    axis = b.draw(st.integers(-rank, rank - 1))
    if b.axes_input("Unsqueeze"):
        out = b.node(s, "Unsqueeze", [v.name, b.ints(s, [axis])])[0]
    else:
        out = b.node(s, "Unsqueeze", [v.name], axes=[axis])[0]
    shape = list(v.shape)
    shape.insert(axis % rank, 1)
    return Value(out, tuple(shape))


def op_squeeze(b: Builder, s: Scope, v: Value) -> Value | None:
    ones = [i for i, d in enumerate(v.shape) if d == 1]
    if not ones or len(v.shape) < 2:
        return None
    if len(ones) < len(v.shape) and b.draw(st.booleans()):  # no axes: every 1
        out = b.node(s, "Squeeze", [v.name])[0]
        return Value(out, tuple(d for d in v.shape if d != 1))
    axis = b.draw(st.sampled_from(ones))
    spelled = axis - len(v.shape) if b.draw(st.booleans()) else axis
    if b.axes_input("Squeeze"):
        out = b.node(s, "Squeeze", [v.name, b.ints(s, [spelled])])[0]
    else:
        out = b.node(s, "Squeeze", [v.name], axes=[spelled])[0]
    return Value(out, v.shape[:axis] + v.shape[axis + 1 :])


def op_flatten(b: Builder, s: Scope, v: Value) -> Value:
    axis = b.draw(st.integers(0, len(v.shape)))
    shape = (_numel(v.shape[:axis]), _numel(v.shape[axis:]))
    return Value(b.node(s, "Flatten", [v.name], axis=axis)[0], shape)


def op_concat(b: Builder, s: Scope, v: Value) -> Value:
    axis = b.draw(st.integers(0, len(v.shape) - 1))
    same = [w for w in s.values if len(w.shape) == len(v.shape)]
    same = [
        w
        for w in same
        if all(a == c for i, (a, c) in enumerate(zip(w.shape, v.shape)) if i != axis)
    ]
    parts = [v, *b.draw(st.lists(st.sampled_from(same), min_size=1, max_size=2))]
    if b.draw(st.booleans()):
        size = b.draw(st.integers(1, 2))
        shape = (*v.shape[:axis], size, *v.shape[axis + 1 :])
        parts.insert(b.draw(st.integers(0, len(parts))), Value(b.const(s, b.floats(shape)), shape))
    dim = sum(p.shape[axis] for p in parts)
    spelled = axis - len(v.shape) if b.draw(st.booleans()) else axis
    out = b.node(s, "Concat", [p.name for p in parts], axis=spelled)[0]
    return Value(out, (*v.shape[:axis], dim, *v.shape[axis + 1 :]))


def op_slice(b: Builder, s: Scope, v: Value) -> Value | None:
    axis = b.draw(st.integers(0, len(v.shape) - 1))
    dim = v.shape[axis]
    if not dim:
        return None
    step = b.draw(st.sampled_from([1, 1, 2, -1]))
    start = b.draw(st.integers(-dim, dim - 1))
    end = b.draw(st.sampled_from([dim, -1, 2**63 - 1, -(2**63), start + 1, dim - 1, 0]))
    index = [slice(None)] * len(v.shape)
    index[axis] = slice(start, end, step)
    shape = np.empty(v.shape)[tuple(index)].shape
    if 0 in shape and 0 not in v.shape:
        return None
    inputs = [v.name, b.ints(s, [start]), b.ints(s, [end])]
    if step != 1 or b.draw(st.booleans()):
        inputs += [b.ints(s, [axis if b.draw(st.booleans()) else axis - len(v.shape)])]
        inputs += [b.ints(s, [step])]
    elif axis != 0:
        inputs += [b.ints(s, [axis])]
    return Value(b.node(s, "Slice", inputs)[0], shape)


def op_gather(b: Builder, s: Scope, v: Value) -> Value | None:
    axis = b.draw(st.integers(0, len(v.shape) - 1))
    dim = v.shape[axis]
    if not dim:
        return None
    if b.k is not None and s.allow_initializers and dim >= 2 and b.draw(st.booleans()):
        out = b.node(s, "Gather", [v.name, b.k], axis=axis)[0]
        return Value(out, (*v.shape[:axis], 2, *v.shape[axis + 1 :]))
    if len(v.shape) >= 2 and b.draw(st.booleans()):  # a scalar index drops the axis
        index = b.const(s, np.array(b.draw(st.integers(-dim, dim - 1)), np.int64))
        return Value(
            b.node(s, "Gather", [v.name, index], axis=axis)[0], v.shape[:axis] + v.shape[axis + 1 :]
        )
    indices = b.draw(st.lists(st.integers(-dim, dim - 1), min_size=1, max_size=3))
    out = b.node(s, "Gather", [v.name, b.ints(s, indices)], axis=axis)[0]
    return Value(out, (*v.shape[:axis], len(indices), *v.shape[axis + 1 :]))


def op_shape_scale(b: Builder, s: Scope, v: Value) -> Value:
    """v divided by a count of its own elements, computed from its Shape."""
    rank = len(v.shape)
    start = b.draw(st.integers(0, rank - 1))
    end = b.draw(st.integers(start + 1, rank))
    dims = _shape_of(b, s, v, start, end)
    count = b.node(s, "Cast", [b.node(s, "ReduceProd", [dims], keepdims=1)[0]], to=FLOAT)[0]
    return Value(b.node(s, "Div", [v.name, count])[0], v.shape)


def op_expand(b: Builder, s: Scope, v: Value) -> Value | None:
    how = b.draw(st.sampled_from(["lead", "same", "ones", "computed"]))
    if how == "computed" and len(v.shape) < 4:  # (2, *Shape(v))
        target = b.node(s, "Concat", [b.ints(s, [2]), b.node(s, "Shape", [v.name])[0]], axis=0)[0]
        return Value(b.node(s, "Expand", [v.name, target])[0], (2, *v.shape))
    if how == "lead" and len(v.shape) < 4:
        shape: tuple[int, ...] = (b.draw(st.integers(1, 3)), *v.shape)
    elif how == "ones":  # 1 in the target keeps v's dim; v's 1 dims grow
        shape = tuple(
            1 if b.draw(st.booleans()) else (b.draw(st.integers(2, 3)) if d == 1 else d)
            for d in v.shape
        )
    else:
        shape = v.shape
    out = b.node(s, "Expand", [v.name, b.ints(s, list(shape))])[0]
    return Value(out, np.broadcast_shapes(v.shape, shape))


def op_cast(b: Builder, s: Scope, v: Value) -> Value:
    # No float64 round trip: ONNX Runtime (1.32) drops a lossless Cast pair whose result only
    # a subgraph reads, then fails the If ("Missing Input", "Trying to get a TensorSeq").
    kind = b.draw(st.sampled_from([TensorProto.FLOAT16, FLOAT]))
    out = b.node(s, "Cast", [v.name], to=kind)[0]
    if kind != FLOAT:
        out = b.node(s, "Cast", [out], to=FLOAT)[0]
    return Value(out, v.shape)


def op_reduce(b: Builder, s: Scope, v: Value) -> Value | None:
    op = b.draw(st.sampled_from(["ReduceSum", "ReduceMean"]))
    keepdims = b.draw(st.integers(0, 1))
    rank = len(v.shape)
    if b.draw(st.booleans()) and (keepdims or False):
        return Value(b.reduce(s, op, v.name, None, 1), (1,) * rank)
    axes = b.draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    if not keepdims and len(axes) == rank:
        return None
    spelled = [a - rank if b.draw(st.booleans()) else a for a in axes]
    out = b.reduce(s, op, v.name, spelled, keepdims)
    shape = tuple(1 if i in axes else d for i, d in enumerate(v.shape) if keepdims or i not in axes)
    return Value(out, shape)


def op_matmul(b: Builder, s: Scope, v: Value) -> Value:
    k, n = v.shape[-1], b.draw(st.integers(1, 5))
    weight = b.const(s, b.floats((k, n)) / np.float32(np.sqrt(max(k, 1))))
    out = b.node(s, "MatMul", [v.name, weight])[0]
    shape = (*v.shape[:-1], n)
    if b.draw(st.booleans()):  # MatMul + Add (fuse-matmul-add)
        bias = b.const(s, b.floats((n,)))
        out = b.node(s, "Add", [out, bias] if b.draw(st.booleans()) else [bias, out])[0]
    return Value(out, shape)


def op_gemm(b: Builder, s: Scope, v: Value) -> Value | None:
    if len(v.shape) != 2:
        return None
    m, k = v.shape
    n = b.draw(st.integers(1, 5))
    trans_b = b.draw(st.integers(0, 1))
    weight = b.floats((n, k) if trans_b else (k, n)) / np.float32(np.sqrt(max(k, 1)))
    inputs = [v.name, b.const(s, weight)]
    if b.draw(st.booleans()):
        inputs.append(b.const(s, b.floats(b.draw(st.sampled_from([(n,), (1, n), (m, n), ()])))))
    alpha = b.draw(st.sampled_from([1.0, 0.5]))
    out = b.node(s, "Gemm", inputs, transB=trans_b, alpha=alpha)[0]
    return Value(out, (m, n))


def op_layernorm(b: Builder, s: Scope, v: Value) -> Value:
    """LayerNormalization over the last axis, spelled out (fuse-layernorm)."""
    mean = b.reduce(s, "ReduceMean", v.name, [-1], 1)
    centred = b.node(s, "Sub", [v.name, mean])[0]
    square = b.node(s, "Pow", [centred, b.const(s, np.array(2.0, np.float32))])[0]
    var = b.reduce(s, "ReduceMean", square, [-1], 1)
    eps = b.node(s, "Add", [var, b.const(s, np.array(1e-5, np.float32))])[0]
    normed = b.node(s, "Div", [centred, b.node(s, "Sqrt", [eps])[0]])[0]
    scaled = b.node(s, "Mul", [normed, b.const(s, b.floats(v.shape[-1:]))])[0]
    return Value(b.node(s, "Add", [scaled, b.const(s, b.floats(v.shape[-1:]))])[0], v.shape)


def op_gelu(b: Builder, s: Scope, v: Value) -> Value:
    """Gelu spelled out with Erf (fuse-gelu)."""
    scaled = b.node(s, "Div", [v.name, b.const(s, np.array(1.4142135, np.float32))])[0]
    erf = b.node(s, "Erf", [scaled])[0]
    plus = b.node(s, "Add", [erf, b.const(s, np.array(1.0, np.float32))])[0]
    half = b.node(s, "Mul", [v.name, b.const(s, np.array(0.5, np.float32))])[0]
    return Value(b.node(s, "Mul", [half, plus])[0], v.shape)


def _sub_chain(b: Builder, scope: Scope, v: Value, min_ops: int, max_ops: int) -> Value:
    for _ in range(b.draw(st.integers(min_ops, max_ops))):
        v = _step(b, scope, v)
        scope.values.append(v)
    return v


def op_if(b: Builder, s: Scope, v: Value) -> Value | None:
    """If (the input's sum > 0, or sometimes a condition that folds: its rank, a constant)
    with two branches that read v from the outer scope; each branch ends at v's shape (a
    branch that changed it adds its mean to v)."""
    if s.depth >= 2:
        return None
    how = b.draw(st.sampled_from(["sum", "sum", "sum", "rank", "constant"]))
    if how == "constant":
        cond = b.const(s, np.array(b.draw(st.booleans())))
    elif how == "rank":  # Size(Shape(source)) > 1: folds however the dims are declared
        rank = b.node(s, "Size", [b.node(s, "Shape", [s.source])[0]])[0]
        cond = b.node(s, "Greater", [rank, b.const(s, np.array(1, np.int64))])[0]
    else:
        b.has_if = True
        total = b.node(s, "ReduceSum", [s.source], keepdims=0)[0]
        cond = b.node(s, "Greater", [total, b.const(s, np.array(0.0, np.float32))])[0]
    branches = []
    outputs = b.draw(st.integers(1, 2))
    out_names = [b.name("if_") for _ in range(outputs)]
    for label in ("then", "else"):
        inner = Scope(
            list(s.values),
            allow_initializers=s.allow_initializers,
            depth=s.depth + 1,
            source=s.source,
        )
        ends = []
        for _ in range(outputs):
            end = _sub_chain(b, inner, v, 0, 3)
            if end.shape != v.shape:
                mean = b.reduce(inner, "ReduceMean", end.name, None, 0)
                end = Value(b.node(inner, "Add", [v.name, mean])[0], v.shape)
            elif end.name == v.name or end in ends:  # a branch output is its own value
                end = Value(b.node(inner, "Identity", [end.name])[0], v.shape)
            ends.append(end)
        infos = [helper.make_tensor_value_info(e.name, FLOAT, e.shape) for e in ends]
        graph = helper.make_graph(
            inner.nodes, b.name(label + "_"), [], infos, initializer=inner.initializers
        )
        branches.append(graph)
    node = helper.make_node(
        "If", [cond], out_names, name=b.name("n_"), then_branch=branches[0], else_branch=branches[1]
    )
    s.nodes.append(node)
    for extra in out_names[1:]:
        s.values.append(Value(extra, v.shape))
    return Value(out_names[0], v.shape)


def op_function(b: Builder, s: Scope, v: Value) -> Value | None:
    """A sub-chain in a model-local function (Constant nodes, no initializers), called once or
    twice; sometimes it takes a second (outer) value."""
    if s.depth >= 2:
        return None
    param = Value("X", v.shape)
    body = Scope([param], allow_initializers=False, depth=s.depth + 1, source="X")
    others = [w for w in s.values if w.name != v.name]
    second = b.draw(st.sampled_from(others)) if others and b.draw(st.booleans()) else None
    if second is not None:
        body.values.append(Value("Y", second.shape))
    start, attributes = param, []
    if b.draw(st.booleans()):  # X scaled by the call's attribute alpha (Constant @alpha)
        alpha = b.name("alpha_")
        constant = helper.make_node("Constant", [], [alpha], name=b.name("n_"))
        reference = helper.make_attribute_ref("value_float", onnx.AttributeProto.FLOAT)
        reference.ref_attr_name = "alpha"
        constant.attribute.append(reference)
        body.nodes.append(constant)
        start, attributes = Value(b.node(body, "Mul", ["X", alpha])[0], v.shape), ["alpha"]
    end = _sub_chain(b, body, start, 1, 4)
    if end.name in ("X", "Y"):
        end = Value(b.node(body, "Identity", [end.name])[0], end.shape)
    inner = [w for w in body.values if w.name not in ("X", "Y", end.name)]
    results = [end]
    if inner and b.draw(st.booleans()):  # a second output, which the caller may not read
        results.append(b.draw(st.sampled_from(inner)))
    name = f"F{len(b.functions)}"
    inputs = ["X"] if second is None else ["X", "Y"]
    b.functions.append(
        helper.make_function(
            FUNCTION_DOMAIN,
            name,
            inputs,
            [r.name for r in results],
            body.nodes,
            [helper.make_opsetid("", b.opset), helper.make_opsetid(FUNCTION_DOMAIN, 1)],
            attributes=attributes,
        )
    )

    def call(args: list[str]) -> Value:
        attrs = {"alpha": b.draw(st.sampled_from([0.5, 1.0, 2.0]))} if attributes else {}
        outs = b.node(s, name, args, len(results), domain=FUNCTION_DOMAIN, **attrs)
        if len(outs) > 1 and b.draw(st.booleans()):
            s.values.append(Value(outs[1], results[1].shape))
        return Value(outs[0], end.shape)

    args = [v.name] if second is None else [v.name, second.name]
    result = call(args)
    if end.shape == v.shape and b.draw(st.booleans()):  # a second call site
        s.values.append(result)
        result = call([result.name, *args[1:]])
    return result


OPS = [
    op_unary,
    op_binary_const,
    op_binary_values,
    op_dropout,
    op_duplicate,
    op_folding,
    op_reshape,
    op_reshape_computed,
    op_transpose,
    op_unsqueeze,
    op_squeeze,
    op_flatten,
    op_concat,
    op_slice,
    op_gather,
    op_shape_scale,
    op_expand,
    op_cast,
    op_reduce,
    op_matmul,
    op_gemm,
    op_layernorm,
    op_gelu,
    op_if,
    op_function,
]
MAX_NUMEL = 96


def _step(b: Builder, s: Scope, v: Value) -> Value:
    """One op on v (or on another value in scope), keeping values small."""
    if len(s.values) > 1 and b.draw(st.integers(0, 4)) == 0:
        v = b.draw(st.sampled_from(s.values))
    for _ in range(8):
        op = b.draw(st.sampled_from(OPS))
        nodes, initializers, values = len(s.nodes), len(s.initializers), len(s.values)
        result = op(b, s, v)
        if result is not None and 1 <= len(result.shape) <= 4 and _numel(result.shape) <= MAX_NUMEL:
            return result
        del s.nodes[nodes:], s.initializers[initializers:], s.values[values:]
    return Value(b.node(s, "Relu", [v.name])[0], v.shape)


@st.composite
def models(draw: Any) -> Built:
    opset = draw(st.integers(17, 21))
    b = Builder(draw, opset)
    x_shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    if draw(st.integers(0, 15)) == 0:  # sometimes an empty tensor
        x_shape = (*x_shape[:-1], 0)
    symbolic = draw(st.lists(st.booleans(), min_size=len(x_shape), max_size=len(x_shape)))
    dims = [f"d{i}" if sym else d for i, (d, sym) in enumerate(zip(x_shape, symbolic))]
    inputs = [helper.make_tensor_value_info("x", FLOAT, dims)]
    if draw(st.booleans()):
        b.k = "k"
        inputs.append(helper.make_tensor_value_info("k", INT64, [2]))
    main = Scope([Value("x", x_shape)])
    v = main.values[0]
    for _ in range(draw(st.integers(2, 10))):
        v = _step(b, main, v)
        main.values.append(v)
    outputs = [v]
    extra = [w for w in main.values if w.name != v.name]
    if extra and draw(st.booleans()):  # x itself sometimes: an input that is an output
        outputs.append(draw(st.sampled_from(extra)))
    infos = [
        helper.make_tensor_value_info(
            o.name, FLOAT, [None] * len(o.shape) if any(symbolic) else o.shape
        )
        for o in outputs
    ]
    if draw(st.booleans()):  # a shape computation as an output (folds to a constant)
        shape_out = b.node(main, "Shape", [v.name])[0]
        infos.append(helper.make_tensor_value_info(shape_out, INT64, [len(v.shape)]))
    graph = helper.make_graph(main.nodes, "fuzz", inputs, infos, initializer=main.initializers)
    opsets = [helper.make_opsetid("", opset)]
    if b.functions:
        opsets.append(helper.make_opsetid(FUNCTION_DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=opsets, functions=b.functions)
    model.ir_version = 8 if opset < 19 else 9 if opset < 21 else 10
    return Built(model, x_shape, b.k is not None, b.has_if)


# -- the property --------------------------------------------------------------------------------


def _feeds(built: Built) -> list[dict[str, np.ndarray]]:
    """Two inputs; with an If, one takes each branch (x's sum above or below 0)."""
    rng = np.random.default_rng(0)
    feeds = []
    for sign in (1.0, -1.0):
        x = rng.standard_normal(built.x_shape).astype(np.float32)
        x = x - (x.mean() if x.size else 0) + np.float32(sign * 0.5)
        feed = {"x": x.astype(np.float32)}
        if built.has_k:
            feed["k"] = rng.integers(0, 2, 2).astype(np.int64)
        feeds.append(feed)
    return feeds


def _run_all(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[list[Any]]:
    """Outputs on each feed, ONNX Runtime's own graph rewrites off (what the graph computes;
    its fusions refuse some valid graphs: LayerNormalization over a Cast to float16)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return [session.run(None, {k: v for k, v in feed.items() if k in wanted}) for feed in feeds]


def _problem(model: onnx.ModelProto, chain: str, feeds, expected) -> str | None:
    """Why ``chain`` breaks the model, or None when it keeps the outputs."""
    if conformance.cannot_apply(chain, model):
        return None
    before = model.SerializeToString()
    try:
        optimized = trtopt.optimize(model, passes=CHAINS[chain], verify=False)
    except Exception as error:
        return f"raises {type(error).__name__}: {error}"[:400]
    if model.SerializeToString() != before:
        return "changed the caller's model"
    try:
        onnx.checker.check_model(optimized, full_check=True)
        got = _run_all(optimized, feeds)
    except Exception as error:
        return "broken: " + " ".join(str(error).split())[:400]
    for want, have in zip(expected, got):
        if len(want) != len(have) or not all(map(conformance.same, want, have)):
            return "computes other outputs"
    return None


def _valid(model: onnx.ModelProto, feeds) -> list[list[Any]] | None:
    try:
        onnx.checker.check_model(model, full_check=True)
        return _run_all(model, feeds)
    except Exception:
        return None


def assert_keeps_outputs(model: onnx.ModelProto, feeds, chains=tuple(CHAINS)) -> None:
    expected = _valid(model, feeds)
    assert expected is not None, "the original model is not valid"
    problems = {c: p for c in chains if (p := _problem(model, c, feeds, expected))}
    assert not problems, problems


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(built=models())
def test_every_pass_keeps_outputs(built: Built) -> None:
    feeds = _feeds(built)
    expected = _valid(built.model, feeds)
    assume(expected is not None)
    for chain in CHAINS:  # the first chain that breaks it (shrinking reruns only up to it)
        problem = _problem(built.model, chain, feeds, expected)
        assert problem is None, f"{chain}: {problem}\n{onnx.printer.to_text(built.model)}"


# -- regressions found by the fuzzer, each on the smallest graph that shows it ------------------


def _x(shape=(2, 3)) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    x = x - (x.mean() if x.size else 0)
    return [{"x": x + np.float32(0.5)}, {"x": x - np.float32(0.5)}]


def _model(
    nodes, outputs: dict, opset=18, functions=(), initializers=(), shape=(2, 3)
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "regression",
        [helper.make_tensor_value_info("x", FLOAT, shape)],
        [helper.make_tensor_value_info(name, FLOAT, s) for name, s in outputs.items()],
        initializer=list(initializers),
    )
    opsets = [helper.make_opsetid("", opset)]
    if functions:
        opsets.append(helper.make_opsetid(FUNCTION_DOMAIN, 1))
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def _scalars(**values: float) -> list[onnx.TensorProto]:
    return [helper.make_tensor(name, FLOAT, [], [value]) for name, value in values.items()]


def _gelu(x: str, out: str) -> list[onnx.NodeProto]:
    """0.5 * x * (1 + erf(x / sqrt 2)), reading the initializers ``_scalars(sqrt2, one, half)``."""
    return [
        helper.make_node("Div", [x, "sqrt2"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["plus"]),
        helper.make_node("Mul", [x, "half"], ["halved"]),
        helper.make_node("Mul", ["halved", "plus"], [out]),
    ]


def test_raising_the_opset_raises_local_functions_too() -> None:
    """fuse (upgrade_opset) raised the model's opset to 20 for Gelu and left a local function's
    import at 18: "FunctionOp imports version 18 whereas model imports version 20"."""
    function = helper.make_function(
        FUNCTION_DOMAIN,
        "F0",
        ["X"],
        ["Y"],
        [helper.make_node("Identity", ["X"], ["Y"])],
        [helper.make_opsetid("", 18)],
    )
    call = helper.make_node("F0", ["x"], ["f"], domain=FUNCTION_DOMAIN)
    scalars = _scalars(sqrt2=1.4142135, one=1.0, half=0.5)
    model = _model(
        [call, *_gelu("f", "y")], {"y": (2, 3)}, functions=[function], initializers=scalars
    )
    optimized = trtopt.optimize(model, passes=CHAINS["fuse-opset-20"], verify=False)
    assert any(n.op_type == "Gelu" for n in optimized.graph.node)
    assert_keeps_outputs(model, _x(), ["fuse-opset-20"])


def test_raising_the_opset_leaves_the_callers_model_alone() -> None:
    """Raising the opset wrote the new version into the caller's ModelProto (graphsurgeon's
    graph shares its opset_import entries), so the original then failed to load beside its
    local functions' imports."""
    scalars = _scalars(sqrt2=1.4142135, one=1.0, half=0.5)
    model = _model(_gelu("x", "y"), {"y": (2, 3)}, initializers=scalars)
    before = model.SerializeToString()
    optimized = trtopt.optimize(model, passes=CHAINS["fuse-opset-20"], verify=False)
    assert optimized.opset_import[0].version == 20
    assert model.SerializeToString() == before


def _if(cond: str, then: list, then_out: str, other: list, other_out: str, out: str, shape):
    branches = [
        helper.make_graph(nodes, label, [], [helper.make_tensor_value_info(name, FLOAT, shape)])
        for label, nodes, name in (("then", then, then_out), ("else", other, other_out))
    ]
    return helper.make_node("If", [cond], [out], then_branch=branches[0], else_branch=branches[1])


def _positive(x: str = "x") -> list[onnx.NodeProto]:
    """``cond``: the sum of ``x`` is above 0 (reads the initializer ``zero``)."""
    return [
        helper.make_node("ReduceSum", [x], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"]),
    ]


def test_sorting_a_model_with_functions_and_subgraphs() -> None:
    """A local function called in an If branch: every pass that sorts (cleanup, the default
    chain) died in graphsurgeon's sort of the function list (RecursionError)."""
    function = helper.make_function(
        FUNCTION_DOMAIN,
        "F0",
        ["X"],
        ["Y"],
        [helper.make_node("Relu", ["X"], ["Y"])],
        [helper.make_opsetid("", 17)],
    )
    branch = _if(
        "cond",
        [helper.make_node("F0", ["x"], ["t"], domain=FUNCTION_DOMAIN)],
        "t",
        [helper.make_node("Identity", ["x"], ["e"])],
        "e",
        "y",
        (2, 3),
    )
    model = _model(
        [*_positive(), branch],
        {"y": (2, 3)},
        opset=17,
        functions=[function],
        initializers=_scalars(zero=0.0),
    )
    assert_keeps_outputs(model, _x(), ["cleanup", "default"])


def _layernorm(x: str, out: str) -> list[onnx.NodeProto]:
    """Layer norm over the last axis, spelled out (initializers ``_scalars(two, eps)``,
    ``gamma``, ``beta``)."""
    return [
        helper.make_node("ReduceMean", [x], ["mean"], axes=[-1]),
        helper.make_node("Sub", [x, "mean"], ["centred"]),
        helper.make_node("Pow", ["centred", "two"], ["square"]),
        helper.make_node("ReduceMean", ["square"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], [out]),
    ]


def test_layernorm_over_an_empty_axis_is_not_fused() -> None:
    """A layer norm over a last axis of size 0 became LayerNormalization, which ONNX Runtime
    refuses to run ("Size of X.shape[axis:] must be at least 1, got 0")."""
    empty = [helper.make_tensor(n, FLOAT, [0], []) for n in ("gamma", "beta")]
    model = _model(
        _layernorm("x", "y"), {"y": (2, 0)}, opset=17, shape=(2, 0),
        initializers=[*_scalars(two=2.0, eps=1e-5), *empty],
    )  # fmt: skip
    assert_keeps_outputs(model, _x((2, 0)), ["fuse-layernorm", "default"])
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "n"  # known from gamma only
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "n"
    assert_keeps_outputs(model, _x((2, 0)), ["fuse-layernorm", "default"])
