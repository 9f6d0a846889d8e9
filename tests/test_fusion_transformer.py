"""Transformer fusions: layernorm (opset 17) and gelu (opset 20), their exporter variants, the
near-misses that must stay, and the opset rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_graphs import EXTRA_CONSUMER, FUSE, NON_CONSTANT, Graph, ops, optimize_checked

SETTINGS = settings(max_examples=12, deadline=None)


def decomposed_layernorm(
    g: Graph,
    x: str,
    hidden: int,
    axes: list[int],
    square: str = "Pow",
    divide: str = "Div",
    affine: bool = True,
    constant_gamma: bool = True,
    axes_as_input: bool = True,
) -> tuple[str, str]:
    """What the torch exporters write for nn.LayerNorm below opset 17; returns (y, mean)."""

    def reduce_mean(t: str) -> str:
        if axes_as_input:
            return g.op("ReduceMean", t, g.const(np.array(axes, dtype=np.int64)))
        return g.op("ReduceMean", t, axes=axes)

    mean = reduce_mean(x)
    d = g.op("Sub", x, mean)
    sq = g.op("Pow", d, g.const(2.0)) if square == "Pow" else g.op("Mul", d, d)
    std = g.op("Sqrt", g.op("Add", reduce_mean(sq), g.const(1e-5)))
    y = g.op("Div", d, std) if divide == "Div" else g.op("Mul", d, g.op("Reciprocal", std))
    if affine:
        gamma = g.rand(hidden, low=0.5, high=1.5) if constant_gamma else g.input([hidden])
        y = g.op("Add", g.op("Mul", y, gamma), g.rand(hidden))
    return y, mean


@SETTINGS
@given(
    variant=st.sampled_from([FUSE, EXTRA_CONSUMER, NON_CONSTANT, "wrong-axis"]),
    square=st.sampled_from(["Pow", "Mul"]),
    divide=st.sampled_from(["Div", "Reciprocal"]),
    affine=st.booleans(),
    positive_axis=st.booleans(),
    opset=st.sampled_from([17, 18]),
)
def test_layernorm(variant, square, divide, affine, positive_axis, opset):
    g = Graph(opset=opset)
    x = g.input([2, 5, 8])
    axes = [1] if variant == "wrong-axis" else ([2] if positive_axis else [-1])
    y, mean = decomposed_layernorm(
        g,
        x,
        5 if variant == "wrong-axis" else 8,
        axes,
        square,
        divide,
        affine=affine or variant == NON_CONSTANT,
        constant_gamma=variant != NON_CONSTANT,
        axes_as_input=opset >= 18,
    )
    if variant == "wrong-axis":  # per-row parameters along axis 1 would not broadcast; use none
        g.nodes = g.nodes[: -2 if affine else None]
        y = g.nodes[-1].output[0]
    g.output(y)
    if variant == EXTRA_CONSUMER:
        g.output(g.op("Relu", mean))
    out = optimize_checked(g, ["fuse-layernorm"], atol=1e-4)
    if variant == NON_CONSTANT:  # the normalization fuses; the runtime scale stays outside
        assert ops(out) == ["LayerNormalization", "Mul", "Add"]
    else:
        assert ("LayerNormalization" in ops(out)) == (variant == FUSE)
    if variant == FUSE:
        assert ops(out) == ["LayerNormalization"]


def test_layernorm_below_opset_17_needs_the_upgrade_option() -> None:
    g = Graph(opset=13)
    x = g.input([2, 3, 8])
    y, _ = decomposed_layernorm(g, x, 8, [-1], axes_as_input=False)
    g.output(y)
    kept = optimize_checked(g, ["fuse-layernorm"])
    assert "LayerNormalization" not in ops(kept)
    fused = optimize_checked(g, [{"fuse-layernorm": {"upgrade_opset": True}}], atol=1e-4)
    assert ops(fused) == ["LayerNormalization"]
    assert fused.opset_import[0].version == 17


def gelu(g: Graph, x: str, form: str, order: int, constant: float | None = None) -> str:
    """0.5 * x * cdf(x) as exporters write it: erf form or tanh approximation, three orders."""
    if form == "erf":
        scaled = g.op("Div", x, g.const(constant or math.sqrt(2.0)))
        cdf = g.op("Add", g.op("Erf", scaled), g.const(1.0))
    else:
        cube = g.op("Pow", x, g.const(3.0)) if order != 1 else g.op("Mul", x, g.op("Mul", x, x))
        inner = g.op("Add", x, g.op("Mul", g.const(0.044715), cube))
        scale = constant or math.sqrt(2.0 / math.pi)
        cdf = g.op("Add", g.const(1.0), g.op("Tanh", g.op("Mul", inner, g.const(scale))))
    half = g.const(0.5)
    if order == 0:
        return g.op("Mul", g.op("Mul", x, cdf), half)
    if order == 1:
        return g.op("Mul", g.op("Mul", half, x), cdf)
    return g.op("Mul", x, g.op("Mul", cdf, half))


@SETTINGS
@given(
    variant=st.sampled_from([FUSE, EXTRA_CONSUMER, "wrong-constant"]),
    form=st.sampled_from(["erf", "tanh"]),
    order=st.sampled_from([0, 1, 2]),
)
def test_gelu(variant, form, order):
    g = Graph(opset=20)
    x = g.input([3, 16])
    y = gelu(g, x, form, order, constant=1.3 if variant == "wrong-constant" else None)
    g.output(y)
    if variant == EXTRA_CONSUMER:
        erf_or_tanh = next(n for n in g.nodes if n.op_type in ("Erf", "Tanh"))
        g.output(g.op("Relu", erf_or_tanh.output[0]))
    out = optimize_checked(g, ["fuse-gelu"], atol=1e-5)
    assert ("Gelu" in ops(out)) == (variant == FUSE)
    if variant == FUSE:
        node = next(n for n in out.graph.node if n.op_type == "Gelu")
        approximate = [a.s for a in node.attribute if a.name == "approximate"]
        assert approximate == ([b"tanh"] if form == "tanh" else [])


@pytest.mark.parametrize("upgrade", [False, True])
def test_gelu_opset(upgrade: bool) -> None:
    g = Graph(opset=18)
    x = g.input([3, 16])
    g.output(gelu(g, x, "erf", 0))
    out = optimize_checked(g, [{"fuse-gelu": {"upgrade_opset": upgrade}}])
    assert ("Gelu" in ops(out)) == upgrade
    assert out.opset_import[0].version == (20 if upgrade else 18)


def test_gelu_upgrade_refused_when_an_op_changes_meaning() -> None:
    g = Graph(opset=18)
    x = g.input([1, 1, 4, 4])
    grid = g.const(np.zeros((1, 2, 2, 2), dtype=np.float32))
    sampled = g.op("GridSample", x, grid, mode="bilinear")  # 'linear' from opset 20 on
    g.output(gelu(g, sampled, "erf", 0))
    out = optimize_checked(g, [{"fuse-gelu": {"upgrade_opset": True}}])
    assert "Gelu" not in ops(out) and out.opset_import[0].version == 18
