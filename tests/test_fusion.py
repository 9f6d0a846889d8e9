"""The fusion catalogue as a whole: the pattern matcher, the ``fuse`` pass, the committed exported
models, the quickstart recipe and the registry/CLI listing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import trtopt
from fusion_graphs import Graph, ops, optimize_checked
from helpers import EXPORTED, ROOT, assert_same_outputs, model_feeds, ort_run
from trtopt.errors import RecipeError
from trtopt.passes import DEFAULT_PASSES, available_passes
from trtopt.passes.fusion import CATALOGUE
from trtopt.passes.fusion.pattern import Const, OneOf, Op, Var, find

QUICKSTART_MODEL = ROOT / "recipes" / "models" / "quickstart.onnx"


def test_catalogue_is_registered_with_docs() -> None:
    passes = available_passes()
    for name in (*CATALOGUE, "fuse"):
        assert name in passes, name
        assert passes[name].summary().endswith("."), name


def test_matcher_binds_shared_tensors_and_commutes() -> None:
    g = Graph()
    x = g.input([2, 3])
    y = g.op("Mul", g.const(2.0), g.op("Add", x, x))
    g.output(y)
    graph = gs.import_onnx(g.model())
    root = graph.nodes[-1]
    pattern = Op("Mul", Op("Add", Var("a"), Var("a"), name="add"), Const("k", value=2.0))
    match = find(pattern, root, set())
    assert not isinstance(match, str)
    assert match["a"].name == x and match["add"].op == "Add"
    assert float(match.value("k")) == 2.0
    assert "is not 3.0" in find(Op("Mul", Var(), Const(value=3.0)), root, set())


def test_matcher_says_why_not() -> None:
    g = Graph()
    x = g.input([2, 3])
    inner = g.op("Relu", x)
    g.output(g.op("Neg", inner))
    g.output(g.op("Exp", inner))
    graph = gs.import_onnx(g.model())
    neg = next(n for n in graph.nodes if n.op == "Neg")
    assert "also read by" in find(Op("Neg", Op("Relu", Var())), neg, set())
    assert "not Sigmoid" in find(Op("Neg", OneOf(Op("Sigmoid", Var()))), neg, set())
    assert find(Op("Neg", Op("Relu", Var(), shared=True)), neg, set()) is not None


def test_fuse_rejects_an_unknown_fusion_with_a_suggestion() -> None:
    with pytest.raises(RecipeError, match="did you mean 'conv-bn'"):
        trtopt.optimize(onnx.load(str(QUICKSTART_MODEL)), [{"fuse": {"fusions": ["conv-bm"]}}])


def test_cli_lists_the_fusions() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trtopt", "passes"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("fuse", "fuse-conv-bn", "fuse-gelu", "eliminate-transposes", "cse"):
        assert f"\n{name}\n" in f"\n{out}"
    assert "needs opset 20" in out


def test_default_chain_fuses() -> None:
    assert "fuse" in DEFAULT_PASSES


def test_quickstart_batchnorms_fold_into_convs() -> None:
    model = onnx.load(str(QUICKSTART_MODEL))
    chain = ["cleanup", "fold-constants", {"fuse": {"fusions": ["conv-bn", "conv-add"]}}]
    fused = trtopt.optimize(model, chain)
    assert "BatchNormalization" not in ops(fused)
    assert ops(fused).count("Conv") == ops(model).count("Conv")
    data = model_feeds(model)
    assert_same_outputs(ort_run(model, data), ort_run(fused, data), atol=1e-4)


def test_exclude_leaves_a_fusion_out() -> None:
    model = onnx.load(str(QUICKSTART_MODEL))
    kept = trtopt.optimize(model, ["fold-constants", {"fuse": {"exclude": ["fuse-conv-bn"]}}])
    assert ops(kept).count("BatchNormalization") == ops(model).count("BatchNormalization")


@pytest.mark.parametrize("path", EXPORTED, ids=lambda p: p.stem)
def test_default_chain_on_exported_models(path) -> None:
    model = onnx.load(str(path))
    optimized = trtopt.optimize(model)
    assert len(optimized.graph.node) <= len(model.graph.node)
    data = model_feeds(model)
    before, after = ort_run(model, data), ort_run(optimized, data)
    assert_same_outputs(before, after, atol=1e-4)
    assert [o.name for o in optimized.graph.output] == [o.name for o in model.graph.output]


def test_upgrade_opset_fuses_gelu_in_exported_bert() -> None:
    model = onnx.load(str(ROOT / "tests" / "models" / "bert_dynamo.onnx"))
    chain = ["cleanup", "fold-constants", {"fuse": {"upgrade_opset": True}}]
    fused = trtopt.optimize(model, chain)
    assert ops(fused).count("Gelu") == ops(model).count("Erf") > 0
    assert ops(fused).count("Erf") == 0
    data = model_feeds(model)
    assert_same_outputs(ort_run(model, data), ort_run(fused, data), atol=1e-4)


def test_graph_output_names_survive_eliminations() -> None:
    """An eliminated node that writes a graph output keeps that output's name."""
    g = Graph()
    x = g.input([2, 3], name="x")
    t = g.op("Transpose", g.op("Relu", x), perm=[1, 0])
    y = g.op("Transpose", t, perm=[1, 0])
    g.outputs.clear()
    g.output(y)
    g.outputs[0].name = y
    out = optimize_checked(g, ["eliminate-transposes"])
    assert [o.name for o in out.graph.output] == [y]
    assert ops(out) == ["Relu"]
    assert np.all(np.isfinite(g.feeds[x]))
