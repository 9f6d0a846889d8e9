"""Models with If/Loop subgraphs (nested, reading outer-scope values) and model-local functions
keep their outputs through every built-in pass, run raw (verify=False, so a pass bug is not
hidden by the rollback). The models are exported by tests/models/export.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import trtopt
from helpers import MODELS, ort_run
from trtopt.model import load_model
from trtopt.passes.graph_shapes import computed_shapes

FLOW = MODELS / "control_flow"
# Change numerics on purpose (precision), need calibration data (quantize, smooth) or judge
# rather than transform (lint): tested apart, for loading and running.
APART = {"precision", "quantize", "smooth", "lint"}
CHAINS = {
    **{name: [name] for name in trtopt.available_passes() if name not in APART},
    "default": None,
    "fuse-opset-20": [{"fuse": {"upgrade_opset": True}}],
    "cleanup-unused-inputs": [{"cleanup": {"remove_unused_inputs": True}}],
}


def _feeds(name: str) -> list[dict[str, np.ndarray]]:
    """Inputs that take every path of the model (each branch, 0 to 5 loop trips)."""
    rng = np.random.default_rng(0)

    def normal(shape: tuple[int, ...], shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale + shift).astype(np.float32)

    if name.startswith("vad"):  # a zero state starts fresh (vad_cond's other branch)
        audio = normal((2, 64))
        states = [np.zeros((2, 1, 2, 8), np.float32), normal((2, 1, 2, 8), scale=0.5)]
        return [{"audio": audio, "state": state} for state in states]
    if name == "cond_cnn":  # the input's mean picks the branch
        return [{"x": normal((2, 3, 8, 8), shift, 0.2)} for shift in (0.9, 0.1)]
    if name == "nested_cond":  # the mean picks the outer branch, column 0's sign the inner one
        feeds = []
        for outer, inner in ((1, 1), (1, -1), (-1, 1)):
            x = normal((3, 16), 0.5 * outer, 0.3)
            x[:, 0] = np.abs(x[:, 0]) * inner
            feeds.append({"x": x})
        return feeds
    if name == "functions":
        return [{"x": rng.random((batch, 3, 8, 8), dtype=np.float32)} for batch in (1, 3)]
    if name == "scripted_loop":
        x = normal((2, 8))
        return [{"x": x, "steps": np.array([steps])} for steps in (0, 1, 2, 5)]
    raise AssertionError(name)


NAMES = ["vad_cond", "vad_functions", "cond_cnn", "nested_cond", "functions", "scripted_loop"]
_CACHE: dict[str, tuple] = {}


def _original(name: str) -> tuple[onnx.ModelProto, list, list]:
    if name not in _CACHE:
        model = load_model(FLOW / f"{name}.onnx")
        feeds = _feeds(name)
        _CACHE[name] = (model, feeds, ort_run(model, feeds))
    return _CACHE[name]


def _subgraphs(graph: onnx.GraphProto) -> int:
    count = 0
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                count += 1 + _subgraphs(attribute.g)
    return count


def _control_flow(model: onnx.ModelProto) -> tuple[int, int]:
    """(subgraphs, local functions that a main-graph node calls)."""
    called = {(n.domain, n.op_type) for n in model.graph.node}
    functions = sum((f.domain, f.name) in called for f in model.functions)
    return _subgraphs(model.graph), functions


def test_models_are_small_and_hold_control_flow() -> None:
    for name in NAMES:
        path = FLOW / f"{name}.onnx"
        assert path.stat().st_size < 200_000
        subgraphs, functions = _control_flow(load_model(path))
        assert subgraphs or functions, name
    # Nested: an If inside an If branch, whose output leaves both.
    assert _subgraphs(load_model(FLOW / "nested_cond.onnx").graph) == 4


def _assert_same(name: str, result: onnx.ModelProto, rtol: float = 1e-4, atol: float = 1e-5):
    model, feeds, expected = _original(name)
    onnx.checker.check_model(result)
    got = ort_run(result, feeds)
    for feed_index, (want, have) in enumerate(zip(expected, got, strict=True)):
        for output, (a, b) in enumerate(zip(want, have, strict=True)):
            np.testing.assert_allclose(
                b, a, rtol=rtol, atol=atol, err_msg=f"{name} feed {feed_index} output {output}"
            )
    # Control flow is data-dependent here: no pass may fold it away.
    before, after = _control_flow(model), _control_flow(result)
    assert (after[0] > 0) == (before[0] > 0), f"{name}: subgraphs {before[0]} -> {after[0]}"
    assert after[1] == before[1], f"{name}: called functions {before[1]} -> {after[1]}"


@pytest.mark.parametrize("chain", list(CHAINS), ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_pass_keeps_outputs(name: str, chain: str) -> None:
    model = _original(name)[0]
    _assert_same(name, trtopt.optimize(model, passes=CHAINS[chain], verify=False))


@pytest.mark.parametrize("name", NAMES)
def test_precision_runs_and_stays_close(name: str) -> None:
    """FP16 changes numbers on purpose; control flow stays FP32, so the model loads, runs and
    stays within FP16's error."""
    model = _original(name)[0]
    _assert_same(name, trtopt.optimize(model, passes=["precision"], verify=False), 2e-2, 1e-2)


@pytest.mark.parametrize("name", NAMES)
def test_lint_leaves_model_runnable(name: str) -> None:
    model = _original(name)[0]
    if _control_flow(model)[1]:
        pytest.xfail("lint reports a model-local function call as an unsupported operator")
    _assert_same(name, trtopt.optimize(model, passes=["lint"], verify=False))


# -- regressions, each on the smallest graph that shows it -------------------------------------


def _lstm_model(where: str) -> onnx.ModelProto:
    """An LSTM whose first output Y is unused (only Y_h is read), in the main graph, in an If
    branch or in a local function: graphsurgeon's cleanup removed Y from the output list, so Y_h
    took Y's place (a rank-4 value where rank 3 was expected)."""
    rng = np.random.default_rng(1)
    inits = [
        helper.make_tensor(n, TensorProto.FLOAT, s, rng.standard_normal(s).astype(np.float32))
        for n, s in (("W", (1, 16, 3)), ("R", (1, 16, 4)))
    ]
    lstm = helper.make_node("LSTM", ["x", "W", "R"], ["Y", "Y_h"], hidden_size=4)
    use = helper.make_node("Relu", ["Y_h"], ["out"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 2, 3])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 4])
    opsets = [helper.make_opsetid("", 18)]
    if where == "main":
        graph = helper.make_graph([lstm, use], "g", [x], [out], inits)
        return helper.make_model(graph, opset_imports=opsets)
    if where == "function":
        function = helper.make_function(
            "local", "F0", ["x", "W", "R"], ["out"], [lstm, use], opsets
        )
        call = helper.make_node("F0", ["x", "W", "R"], ["out"], domain="local")
        graph = helper.make_graph([call], "g", [x], [out], inits)
        opsets = [*opsets, helper.make_opsetid("local", 1)]
        return helper.make_model(graph, opset_imports=opsets, functions=[function])
    branch = helper.make_graph([lstm, use], "then", [], [out])
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["out"], value_floats=[0.0] * 8, name="zero"),],
        "else", [], [out],
    )  # fmt: skip
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    node = helper.make_node("If", ["flag"], ["out"], then_branch=branch, else_branch=other)
    graph = helper.make_graph([node], "g", [x, flag], [out], inits)
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("where", ["main", "branch", "function"])
def test_cleanup_keeps_output_positions(where: str) -> None:
    model = _lstm_model(where)
    feeds = [{"x": np.random.default_rng(2).standard_normal((5, 2, 3)).astype(np.float32)}]
    if where == "branch":
        feeds[0]["flag"] = np.array(True)
    result = trtopt.optimize(model, passes=["cleanup"], verify=False)
    onnx.checker.check_model(result)
    for want, have in zip(ort_run(model, feeds), ort_run(result, feeds), strict=True):
        np.testing.assert_allclose(have[0], want[0], rtol=1e-6)


def test_cleanup_never_removes_a_body_input() -> None:
    """remove_unused_inputs is about the model's inputs: the Loop body's unread ``cond`` input
    stays (a body's inputs are positional)."""
    model = _original("scripted_loop")[0]
    result = trtopt.optimize(
        model, passes=[{"cleanup": {"remove_unused_inputs": True}}], verify=False
    )
    body = next(n for n in result.graph.node if n.op_type == "Loop").attribute[0].g
    assert len(body.input) == 3
    _assert_same("scripted_loop", result)


def test_shape_inference_mid_rewrite_is_quiet(capfd: pytest.CaptureFixture) -> None:
    """A fusion asks for shapes while a replaced root (no outputs, its name taken by the new
    node) is still listed: graphsurgeon printed "Found distinct Nodes that share the same name"
    for each, hundreds of lines on a real model."""
    import onnx_graphsurgeon as gs

    from trtopt.graph_io import import_graph

    graph = import_graph(_lstm_model("main"))
    relu = next(n for n in graph.nodes if n.op == "Relu")
    output = relu.outputs[0]
    relu.outputs.clear()  # as replace_root leaves it
    graph.nodes.append(gs.Node("Relu", relu.name, inputs=[relu.inputs[0]], outputs=[output]))
    shapes, _ = computed_shapes(graph, symbolic=False)
    assert shapes["out"] == [1, 2, 4]
    captured = capfd.readouterr()
    assert "share the same name" not in captured.out + captured.err
