"""Weight-folding fusions: conv-bn, convtranspose-bn, conv-add, conv-mul, pad-conv, gemm-bn,
matmul-add. Each on hypothesis graphs with the pattern and its near-misses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_graphs import (
    EXTRA_CONSUMER,
    FUSE,
    NON_CONSTANT,
    Graph,
    channels,
    ops,
    optimize_checked,
    spatial,
    variants,
)

SETTINGS = settings(max_examples=12, deadline=None)


def batchnorm(g: Graph, x: str, c: int, constant: bool = True) -> str:
    scale = g.rand(c, low=0.5, high=1.5) if constant else g.input([c])
    return g.op(
        "BatchNormalization",
        x,
        scale,
        g.rand(c),
        g.rand(c),
        g.rand(c, low=0.5, high=2.0),
        epsilon=1e-3,
    )


def conv(g: Graph, x: str, cin: int, cout: int, bias: bool, constant: bool = True, **attrs):
    w = g.rand(cout, cin, 3, 3) if constant else g.input([cout, cin, 3, 3])
    inputs = [x, w] + ([g.rand(cout)] if bias else [])
    return g.op("Conv", *inputs, pads=[1, 1, 1, 1], **attrs)


def finish(g: Graph, y: str, variant: str, intermediate: str) -> None:
    g.output(y)
    if variant == EXTRA_CONSUMER:
        g.output(g.op("Relu", intermediate))


@SETTINGS
@given(variant=variants, cin=channels, cout=channels, hw=spatial, bias=st.booleans())
def test_conv_bn(variant, cin, cout, hw, bias):
    g = Graph()
    x = g.input([2, cin, hw, hw])
    c = conv(g, x, cin, cout, bias)
    y = batchnorm(g, c, cout, constant=variant != NON_CONSTANT)
    finish(g, y, variant, c)
    out = optimize_checked(g, ["fuse-conv-bn"])
    assert ("BatchNormalization" not in ops(out)) == (variant == FUSE)


@SETTINGS
@given(variant=variants, group=st.sampled_from([1, 2]), hw=spatial, bias=st.booleans())
def test_convtranspose_bn(variant, group, hw, bias):
    g = Graph()
    cin, cout = 4, 6
    x = g.input([1, cin, hw, hw])
    shape = (cin, cout // group, 3, 3)
    w = g.input(list(shape)) if variant == NON_CONSTANT else g.rand(*shape)
    inputs = [x, w] + ([g.rand(cout)] if bias else [])
    c = g.op("ConvTranspose", *inputs, group=group, strides=[2, 2])
    y = batchnorm(g, c, cout)
    finish(g, y, variant, c)
    out = optimize_checked(g, ["fuse-convtranspose-bn"])
    assert ("BatchNormalization" not in ops(out)) == (variant == FUSE)


@SETTINGS
@given(
    variant=st.sampled_from([FUSE, EXTRA_CONSUMER, NON_CONSTANT, "spatial"]),
    op=st.sampled_from(["Add", "Mul"]),
    cout=channels,
    bias=st.booleans(),
    rank=st.sampled_from([1, 3, 4]),
)
def test_conv_add_and_mul(variant, op, cout, bias, rank):
    g = Graph()
    x = g.input([2, 3, 5, 5])
    c = conv(g, x, 3, cout, bias)
    shape = {1: [1], 3: [cout, 1, 1], 4: [1, cout, 1, 1]}[rank]
    if variant == "spatial":  # varies over H and W: not a per-channel constant
        shape = [1, cout, 5, 5]
    other = g.input(shape) if variant == NON_CONSTANT else g.rand(*shape, low=0.5, high=1.5)
    y = g.op(op, other, c) if rank == 3 else g.op(op, c, other)
    finish(g, y, variant, c)
    out = optimize_checked(g, [f"fuse-conv-{op.lower()}"])
    assert ops(out).count("Conv") == 1
    assert (op not in ops(out)) == (variant == FUSE)


@SETTINGS
@given(
    variant=st.sampled_from([FUSE, EXTRA_CONSUMER, "channel-pad", "reflect", "value", "same"]),
    pads=st.lists(st.integers(0, 2), min_size=4, max_size=4),
    opset=st.sampled_from([13, 18]),
    valid=st.booleans(),
)
def test_pad_conv(variant, pads, opset, valid):
    g = Graph(opset=opset)
    x = g.input([1, 3, 6, 6])
    full = [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]
    if variant == "channel-pad":
        full[1] = 1
    mode = "reflect" if variant == "reflect" else "constant"
    inputs = [x, g.const(np.array(full, dtype=np.int64))]
    if variant == "value":
        inputs.append(g.const(np.array(0.5, dtype=np.float32)))
    p = g.op("Pad", *inputs, mode=mode)
    cin = 4 if variant == "channel-pad" else 3
    w, b = g.rand(2, cin, 3, 3), g.rand(2)
    if variant == "same":  # auto_pad SAME_UPPER: padding the Conv computes itself, not fused
        y = g.op("Conv", p, w, b, auto_pad="SAME_UPPER")
    elif valid:
        y = g.op("Conv", p, w, b, auto_pad="VALID")
    else:
        y = g.op("Conv", p, w, b, pads=[1, 0, 1, 2])
    finish(g, y, variant, p)
    out = optimize_checked(g, ["fuse-pad-conv"])
    assert ("Pad" not in ops(out)) == (variant == FUSE)


@SETTINGS
@given(variant=variants, trans_b=st.booleans(), n=channels, with_c=st.booleans())
def test_gemm_bn(variant, trans_b, n, with_c):
    g = Graph()
    x = g.input([4, 5])
    w = g.rand(*((n, 5) if trans_b else (5, n)))
    inputs = [x, w] + ([g.rand(n)] if with_c else [])
    y0 = g.op("Gemm", *inputs, transB=int(trans_b), beta=0.5)
    y = batchnorm(g, y0, n, constant=variant != NON_CONSTANT)
    finish(g, y, variant, y0)
    out = optimize_checked(g, ["fuse-gemm-bn"])
    assert ("BatchNormalization" not in ops(out)) == (variant == FUSE)


@SETTINGS
@given(
    variant=st.sampled_from([FUSE, EXTRA_CONSUMER, NON_CONSTANT, "rank-3", "bias-broadcasts"]),
    n=channels,
)
def test_matmul_add(variant, n):
    g = Graph()
    x = g.input([2, 4, 5] if variant == "rank-3" else [4, 5])
    w = g.input([5, n]) if variant == NON_CONSTANT else g.rand(5, n)
    m = g.op("MatMul", x, w)
    bias = g.rand(3, 4, n) if variant == "bias-broadcasts" else g.rand(n)
    y = g.op("Add", bias, m)
    finish(g, y, variant, m)
    out = optimize_checked(g, ["fuse-matmul-add"])
    assert ("Gemm" in ops(out)) == (variant == FUSE)


def test_refusal_reason_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    g = Graph()
    x = g.input([2, 4, 5])
    y = g.op("Add", g.op("MatMul", x, g.rand(5, 3)), g.rand(3))
    g.output(y)
    with caplog.at_level("DEBUG", logger="trtopt.passes"):
        optimize_checked(g, ["fuse-matmul-add"])
    assert "Gemm needs a rank-2 A" in caplog.text and "has rank 3" in caplog.text
