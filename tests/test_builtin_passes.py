"""The built-in passes keep semantics: on the exported models and on generated graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import trtopt
from helpers import EXPORTED, assert_same_outputs, model_feeds, ort_run
from trtopt import RecipeError
from trtopt.model import load_model
from trtopt.passes import DEFAULT_PASSES


@pytest.mark.parametrize("model_path", EXPORTED, ids=lambda p: p.stem)
@pytest.mark.parametrize(
    "chain", [["cleanup"], ["fold-constants"], ["infer-shapes"], list(DEFAULT_PASSES)], ids="+".join
)
def test_passes_keep_outputs_on_exported_models(model_path, chain):
    model = load_model(model_path)
    optimized = trtopt.optimize(model, passes=chain)
    onnx.checker.check_model(optimized, full_check=True)
    data = model_feeds(model)
    assert_same_outputs(ort_run(model, data), ort_run(optimized, data))
    assert [o.name for o in optimized.graph.output] == [o.name for o in model.graph.output]
    assert [i.name for i in optimized.graph.input] == [i.name for i in model.graph.input]


def test_default_chain_folds_the_legacy_bert_shape_arithmetic():
    model = load_model(EXPORTED[0].parent / "bert_legacy.onnx")
    optimized = trtopt.optimize(model)
    before = {n.op_type for n in model.graph.node}
    after = [n.op_type for n in optimized.graph.node]
    assert "Constant" in before and "Constant" not in after
    assert len(after) < len(model.graph.node)


def test_cleanup_removes_identity_dropout_and_dead_nodes():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Identity", ["r"], ["i"]),
        helper.make_node("Dropout", ["i"], ["d"]),
        helper.make_node("Sigmoid", ["x"], ["dead"]),
        helper.make_node("Identity", ["d"], ["y"]),  # output name must survive
    ]
    unused = numpy_helper.from_array(np.ones(4, np.float32), "unused")
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], [unused]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    optimized = trtopt.optimize(model, passes=["cleanup"])
    assert [n.op_type for n in optimized.graph.node] == ["Relu"]
    assert optimized.graph.node[0].output == ["y"]
    assert not optimized.graph.initializer


def test_cleanup_keeps_dropout_whose_mask_is_read_and_identity_between_io():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("y", "z")]
    mask = helper.make_tensor_value_info("mask", TensorProto.BOOL, [2])
    nodes = [
        helper.make_node("Dropout", ["x"], ["y", "mask"]),
        helper.make_node("Identity", ["x"], ["z"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [*outs, mask]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    optimized = trtopt.optimize(model, passes=["cleanup"])
    assert sorted(n.op_type for n in optimized.graph.node) == ["Dropout", "Identity"]


def test_fold_constants_respects_size_threshold():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024])
    big = numpy_helper.from_array(np.arange(1024, dtype=np.float32), "big")
    nodes = [
        helper.make_node("Mul", ["big", "big"], ["sq"]),
        helper.make_node("Add", ["x", "sq"], ["y"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], [big]), opset_imports=[helper.make_opsetid("", 17)]
    )
    kept = trtopt.optimize(model, passes=[{"fold-constants": {"size_threshold": "1KiB"}}])
    folded = trtopt.optimize(model, passes=[{"fold-constants": {"size_threshold": "1MiB"}}])
    assert [n.op_type for n in kept.graph.node] == ["Mul", "Add"]
    assert [n.op_type for n in folded.graph.node] == ["Add"]


def test_infer_shapes_records_intermediate_shapes():
    model = load_model(EXPORTED[0].parent / "cnn_legacy.onnx")
    inferred = trtopt.optimize(model, passes=["infer-shapes"])
    graph = gs.import_onnx(inferred)
    variables = [t for t in graph.tensors().values() if isinstance(t, gs.Variable)]
    assert variables and all(t.shape is not None for t in variables)


def test_optimize_rejects_unknown_pass_and_option():
    with pytest.raises(RecipeError, match="unknown pass 'clean'; did you mean 'cleanup'"):
        trtopt.optimize(load_model(EXPORTED[0]), passes=["clean"])
    with pytest.raises(RecipeError, match="pass 'cleanup': remove_identiy: Extra inputs"):
        trtopt.optimize(load_model(EXPORTED[0]), passes=[{"cleanup": {"remove_identiy": False}}])


UNARY = ["Relu", "Sigmoid", "Tanh", "Identity", "Dropout", "Neg", "Abs"]
BINARY = ["Add", "Mul", "Sub", "Max"]


@st.composite
def random_graphs(draw) -> onnx.ModelProto:
    """Chains of elementwise ops mixing inputs, constants and constant-only subgraphs, with
    Identity/Dropout around, and some intermediates exposed as graph outputs."""
    width = draw(st.integers(1, 4))
    tensors, nodes, inits = ["x"], [], []
    for i in range(draw(st.integers(1, 10))):
        if draw(st.booleans()):
            op = draw(st.sampled_from(UNARY))
            nodes.append(helper.make_node(op, [draw(st.sampled_from(tensors))], [f"t{i}"]))
        else:
            op = draw(st.sampled_from(BINARY))
            const = f"c{i}"
            value = draw(st.floats(-2, 2, allow_nan=False, width=32))
            inits.append(numpy_helper.from_array(np.full([width], value, np.float32), const))
            left = draw(st.sampled_from([*tensors, const]))
            right = draw(st.sampled_from([*tensors, const]))
            nodes.append(helper.make_node(op, [left, right], [f"t{i}"]))
        tensors.append(f"t{i}")
    produced = tensors[1:]
    exposed = draw(st.lists(st.sampled_from(produced), min_size=1, max_size=3, unique=True))
    if produced[-1] not in exposed:
        exposed.append(produced[-1])
    outputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in exposed]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [width])
    graph = helper.make_graph(nodes, "random", [x], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=random_graphs())
def test_default_chain_keeps_semantics_on_generated_graphs(model):
    width = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    data = [{"x": np.linspace(-3, 3, width, dtype=np.float32)}]
    optimized = trtopt.optimize(model)
    assert [o.name for o in optimized.graph.output] == [o.name for o in model.graph.output]
    assert_same_outputs(ort_run(model, data), ort_run(optimized, data))
    assert len(optimized.graph.node) <= len(model.graph.node)


def test_fold_constants_trusts_computed_shapes_not_declared_ones():
    """A model declares its output `y` as [1, 4], but it is [batch, 4]: folding Shape(y) from
    the declaration would bake a batch of 1 into the Reshape."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    wrong = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("Shape", ["y"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["z"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [wrong, z]), opset_imports=[helper.make_opsetid("", 17)]
    )
    data = [{"x": np.arange(12, dtype=np.float32).reshape(3, 4)}]
    for chain in (["fold-constants"], list(DEFAULT_PASSES)):
        optimized = trtopt.optimize(model, passes=chain)
        assert_same_outputs(ort_run(model, data), ort_run(optimized, data))
