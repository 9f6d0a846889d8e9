"""Eliminations and simplifications: transposes, reshapes, casts, unsqueeze/squeeze, expand/tile,
pad/slice, no-op arithmetic, shape chains, CSE and initializer dedup. Each with near-misses."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trtopt
from fusion_graphs import Graph, ops, optimize_checked, run
from helpers import MODELS, model_feeds, ort_run

SETTINGS = settings(max_examples=12, deadline=None)
I64 = np.int64


@SETTINGS
@given(first=st.permutations(range(4)), second=st.permutations(range(4)), extra=st.booleans())
def test_transposes(first, second, extra):
    g = Graph()
    x = g.input([2, 3, 4, 5])
    t = g.op("Transpose", x, perm=list(first))
    y = g.op("Relu", g.op("Transpose", t, perm=list(second)))
    g.output(y)
    if extra:
        g.output(g.op("Neg", t))
    out = optimize_checked(g, ["eliminate-transposes"])
    composed = [first[a] for a in second]
    expected = 2 if extra else (0 if composed == [0, 1, 2, 3] else 1)
    assert ops(out).count("Transpose") == expected


@pytest.mark.parametrize(
    ("inner", "target", "kept"),
    [
        ("Reshape", [6, -1], 1),
        ("Flatten", [2, 3, 20], 1),
        ("Unsqueeze", [-1, 5], 1),
        ("Reshape", [0, -1], 2),  # the outer 0 copies a dim of the intermediate: left alone
    ],
)
def test_reshape_chains(inner: str, target: list[int], kept: int) -> None:
    g = Graph()
    x = g.input([2, 3, 4, 5])
    if inner == "Reshape":
        mid = g.op("Reshape", x, g.const(np.array([6, 20], dtype=I64)))
    elif inner == "Flatten":
        mid = g.op("Flatten", x, axis=2)
    else:
        mid = g.op("Unsqueeze", x, g.const(np.array([0], dtype=I64)))
    g.output(g.op("Reshape", mid, g.const(np.array(target, dtype=I64))))
    out = optimize_checked(g, ["eliminate-reshapes"])
    assert len(out.graph.node) == kept


@pytest.mark.parametrize(
    ("target", "removed"), [([0, -1], True), ([-1, 3], True), ([2, 3], False), ([3, -1], False)]
)
def test_noop_reshape_with_a_dynamic_dim(target: list[int], removed: bool) -> None:
    g = Graph()
    x = g.input(["batch", 3])
    g.output(g.op("Relu", g.op("Reshape", g.op("Neg", x), g.const(np.array(target, dtype=I64)))))
    out = optimize_checked(g, ["eliminate-reshapes"])
    assert ("Reshape" not in ops(out)) == removed


def test_noop_reshape_is_judged_on_computed_shapes() -> None:
    """A declared output shape that claims a no-op must not make the Reshape vanish."""
    g = Graph()
    x = g.input([2, 3])
    y = g.op("Reshape", g.op("Relu", x), g.const(np.array([3, 2], dtype=I64)))
    g.output(y, shape=[2, 3])  # wrong: the graph computes [3, 2]
    same = g.op("Reshape", g.op("Neg", x), g.const(np.array([2, 3], dtype=I64)))
    g.output(same)
    out = optimize_checked(g, ["eliminate-reshapes"])
    assert ops(out).count("Reshape") == 1
    assert run(out, g.feeds)[0].shape == (3, 2)


@pytest.mark.parametrize(
    ("source", "middle", "target", "casts_left"),
    [
        (np.float32, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT, 0),  # exact round trip
        (np.float32, onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, 2),  # lossy: kept
        (np.int32, onnx.TensorProto.INT64, onnx.TensorProto.FLOAT, 1),  # exact: one Cast
        (np.float32, onnx.TensorProto.INT32, onnx.TensorProto.INT64, 2),  # truncation: kept
        (np.float32, None, onnx.TensorProto.FLOAT, 0),  # a Cast to its own type
    ],
)
def test_cast_chains(source, middle, target, casts_left: int) -> None:
    g = Graph()
    x = g.input([3, 4], dtype=source)
    g.feeds[x] = (g.rng.standard_normal((3, 4)) * 100).astype(source)
    y = g.op("Abs", x)
    if middle is not None:
        y = g.op("Cast", y, to=middle)
    g.output(g.op("Neg", g.op("Cast", y, to=target)), dtype=target)
    out = optimize_checked(g, ["eliminate-casts"])
    assert ops(out).count("Cast") == casts_left


@pytest.mark.parametrize(
    ("first", "a1", "second", "a2", "left"),
    [
        ("Unsqueeze", [1], "Squeeze", [1], []),
        ("Unsqueeze", [0, 3], "Squeeze", [0, 3], []),
        ("Unsqueeze", [1], "Squeeze", [2], ["Unsqueeze", "Squeeze"]),  # wrong axis
        ("Unsqueeze", [1], "Unsqueeze", [2], ["Unsqueeze"]),  # chain merges
        ("Unsqueeze", [-1], "Unsqueeze", [0], ["Unsqueeze"]),
    ],
)
@pytest.mark.parametrize("shared", [False, True])
def test_unsqueeze_squeeze(first, a1, second, a2, left, shared) -> None:
    g = Graph()
    x = g.input([2, 1, 3])
    mid = g.op(first, x, g.const(np.array(a1, dtype=I64)))
    g.output(g.op("Relu", g.op(second, mid, g.const(np.array(a2, dtype=I64)))))
    if shared:  # the first node feeds another: it stays, the pair still goes
        g.output(g.op("Neg", mid))
    out = optimize_checked(g, ["eliminate-unsqueeze-squeeze"])
    expected = [*left, "Relu"]
    if shared:
        expected += ["Neg"] + ([first] if left != [first, second] else [])
    assert sorted(ops(out)) == sorted(expected)


@pytest.mark.parametrize(
    ("op", "value", "removed"),
    [
        ("Expand", [1, 4], True),
        ("Expand", [3, 4], True),
        ("Expand", [2, 3, 4], False),  # raises the rank
        ("Expand", [3, 1], True),
        ("Tile", [1, 1], True),
        ("Tile", [1, 2], False),
    ],
)
def test_expand_tile(op: str, value: list[int], removed: bool) -> None:
    g = Graph()
    x = g.input([3, 4])
    g.output(g.op("Relu", g.op(op, x, g.const(np.array(value, dtype=I64)))))
    out = optimize_checked(g, ["eliminate-expand-tile"])
    assert (op not in ops(out)) == removed


def test_expand_is_judged_on_computed_shapes() -> None:
    g = Graph()
    x = g.input([1, 4])
    g.output(g.op("Expand", g.op("Relu", x), g.const(np.array([3, 4], dtype=I64))), shape=[1, 4])
    out = optimize_checked(g, ["eliminate-expand-tile"])
    assert "Expand" in ops(out)


@pytest.mark.parametrize(
    ("op", "args", "removed"),
    [
        ("Pad", {"pads": [0, 0, 0, 0]}, True),
        ("Pad", {"pads": [0, 1, 0, 0]}, False),
        ("Slice", {"starts": [0], "ends": [2**63 - 1], "axes": [1]}, True),
        ("Slice", {"starts": [0], "ends": [4], "axes": [-1]}, True),
        ("Slice", {"starts": [0], "ends": [3], "axes": [1]}, False),
        ("Slice", {"starts": [1], "ends": [2**63 - 1], "axes": [0]}, False),
    ],
)
def test_pad_slice(op: str, args: dict, removed: bool) -> None:
    g = Graph()
    x = g.input([3, 4])
    inputs = [x, *(g.const(np.array(v, dtype=I64)) for v in args.values())]
    g.output(g.op("Relu", g.op(op, *inputs)))
    out = optimize_checked(g, ["eliminate-pad-slice"])
    assert (op not in ops(out)) == removed


@pytest.mark.parametrize(
    ("op", "value", "shape", "removed"),
    [
        ("Add", 0.0, [4], True),
        ("Mul", 1.0, [1, 4], True),
        ("Div", 1.0, [], True),
        ("Sub", 0.0, [2, 3, 4], False),  # broadcasts x up
        ("Add", 0.5, [4], False),
        ("And", 1.0, [1], True),
        ("Or", 0.0, [4], True),
        ("Or", 1.0, [4], False),
    ],
)
def test_noop_arith(op: str, value: float, shape: list[int], removed: bool) -> None:
    g = Graph()
    x = g.input([3, 4])
    if op in ("And", "Or"):
        c = g.const(np.full(shape, bool(value)))
        g.output(
            g.op("Not", g.op(op, g.op("Less", x, g.const(0.0)), c)), dtype=onnx.TensorProto.BOOL
        )
    else:
        c = g.const(np.full(shape, value, dtype=np.float32))
        g.output(g.op("Relu", g.op(op, g.op("Neg", x), c)))
    out = optimize_checked(g, ["eliminate-noop-arith"])
    assert (op not in ops(out)) == removed


def test_cse_and_dedup() -> None:
    g = Graph()
    x = g.input([3, 4])
    w1, w2 = g.const(np.ones((4, 4), np.float32)), g.const(np.ones((4, 4), np.float32))
    a, b = g.op("MatMul", x, w1), g.op("MatMul", x, w2)
    g.output(g.op("Add", g.op("Relu", a), g.op("Relu", b)))
    g.output(g.op("RandomUniformLike", a, seed=1.0))
    g.output(g.op("RandomUniformLike", a, seed=1.0))
    out = trtopt.optimize(g.model(), ["dedup-initializers", "cse"])
    assert ops(out).count("MatMul") == 1 and ops(out).count("Relu") == 1
    assert ops(out).count("RandomUniformLike") == 2  # never merged
    assert len(out.graph.initializer) == 1


def test_shape_chains_on_exported_bert() -> None:
    model = onnx.load(str(MODELS / "bert_legacy.onnx"))
    folded = trtopt.optimize(model, ["cleanup", "fold-constants"])
    simplified = trtopt.optimize(folded, ["simplify-shapes"])
    # The Shape nodes that read the embeddings stay: their sequence dim is the broadcast of
    # `sequence` with min(64, sequence), equal only for inputs that fit the position table,
    # which sound shape inference cannot assume.
    assert ops(simplified).count("Shape") <= ops(folded).count("Shape")
    assert ops(simplified).count("Concat") < ops(folded).count("Concat")
    data = model_feeds(model, samples=1)
    for a, b in zip(ort_run(model, data)[0], ort_run(simplified, data)[0], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    # The sequence length stays dynamic: another length runs too.
    longer = [{k: np.repeat(v, 2, axis=1) for k, v in data[0].items()}]
    for a, b in zip(ort_run(model, longer)[0], ort_run(simplified, longer)[0], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
