"""The smooth pass (SmoothQuant): the same outputs, activation channel outliers moved into the
weights (folded into a LayerNormalization read only by the products, a Mul where a residual
reads it too), and INT8 after it closer to FP32 than INT8 alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import trtopt
from trtopt import feeds
from trtopt.calibration import DataSet, DataSource
from trtopt.passes import PassContext
from trtopt.passes.smooth import Smooth

CHANNELS, TOKENS = 64, 16
OUTLIERS = [5, 40]


def _model() -> onnx.ModelProto:
    """Two LayerNorms whose scales make channels 5 and 40 thirty times wider than the rest (as
    trained transformers have): the first read only by two MatMuls, the second by a MatMul
    and the residual Add."""
    rng = np.random.default_rng(0)

    def const(name: str, values: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(values.astype(np.float32), name)

    gamma = np.ones(CHANNELS)
    gamma[OUTLIERS] = 30.0
    weights = [const(f"w{i}", rng.normal(0, 0.1, (CHANNELS, CHANNELS))) for i in range(4)]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["a"], name="ln1", axis=-1),
        helper.make_node("MatMul", ["a", "w0"], ["q"], name="q"),
        helper.make_node("MatMul", ["a", "w1"], ["k"], name="k"),
        helper.make_node("Add", ["q", "k"], ["h"], name="qk"),
        helper.make_node("LayerNormalization", ["h", "g", "b"], ["c"], name="ln2", axis=-1),
        helper.make_node("MatMul", ["c", "w2"], ["f"], name="fc1"),
        helper.make_node("Relu", ["f"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w3"], ["m"], name="fc2"),
        helper.make_node("Add", ["m", "c"], ["y"], name="residual"),
    ]
    shape = ["batch", TOKENS, CHANNELS]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [const("g", gamma), const("b", rng.normal(0, 0.1, CHANNELS)), *weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, TOKENS, CHANNELS)).astype(np.float32)} for _ in range(count)]


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def _npz(folder: Path, data: list[dict[str, np.ndarray]]) -> str:
    folder.mkdir()
    for i, feed in enumerate(data):
        np.savez(folder / f"{i}.npz", **feed)
    return str(folder / "*.npz")


def test_the_outputs_stay_and_the_outliers_move_into_the_weights(tmp_path):
    model = _model()
    infos = feeds.model_inputs(model)
    data = DataSet(DataSource(npz=_npz(tmp_path / "calib", _feeds(8, 1))), infos, {}, {})
    ctx = PassContext(scratch_dir=tmp_path, calibration=data)
    result = Smooth().run(gs.import_onnx(model), ctx)
    smoothed = gs.export_onnx(result.graph)
    onnx.checker.check_model(smoothed, full_check=True)
    assert result.modified
    for feed in _feeds(4, 2):
        np.testing.assert_allclose(_run(smoothed, feed), _run(model, feed), rtol=1e-4, atol=1e-4)
    found = ctx.details["activations"]
    assert found["a"]["into"] == "ln1"  # read only by q and k: folded, no new node
    assert sorted(found["a"]["nodes"]) == ["k", "q"]
    assert found["c"]["into"] == "c_smooth"  # the residual reads it too: a Mul feeds fc1
    assert found["r"]["into"] == "r_smooth"  # fc2's input, after the Relu
    assert sorted(n.name for n in smoothed.graph.node if n.op_type == "Mul") == [
        "c_smooth",
        "r_smooth",
    ]
    before, after = found["a"]["channel_spread"]
    assert before > 20 and after < before / 4


@pytest.mark.parametrize("smooth", [False, True])
def test_int8_after_smoothing_is_closer_to_fp32(tmp_path, write_recipe, smooth):
    path = tmp_path / "block.onnx"
    onnx.save(_model(), str(path))
    quantize = {"quantize": {"calibrator": "minmax", "high_precision": "fp32"}}
    recipe = {
        "name": "smoothed" if smooth else "plain",
        "model": str(path),
        "inputs": {"x": {"shape": [1, TOKENS, CHANNELS]}},
        "data": {"calibration": {"npz": _npz(tmp_path / "calib", _feeds(16, 1))}},
        "passes": ["smooth", quantize] if smooth else [quantize],
        "check": {
            "data": {"npz": _npz(tmp_path / "held-out", _feeds(8, 3))},
            "samples": 8,
            "thresholds": {"min_cosine": 0.99},
            "latency_runs": 0,
        },
        "output": str(tmp_path / "out"),
    }
    result = trtopt.compile(write_recipe(recipe), use_cache=False)
    kept = [p["name"] for p in result.report["passes"] if not p.get("rolled_back")]
    assert kept == ["smooth", "quantize"] if smooth else ["quantize"]
    cosine = result.report["accuracy"]["outputs"]["y"]["metrics"]["cosine"]
    # Measured: cosine 0.9971 (max abs 15.1) plain, 0.99988 (2.09) smoothed: unsmoothed, the
    # two outlier channels set the per-tensor scale of every MatMul input.
    assert (cosine > 0.9995) if smooth else (cosine < 0.998)


def test_an_activation_a_branch_reads_is_never_divided_in_place(tmp_path):
    """An If branch reads the LayerNorm's output without its node listing it: folding 1/s into
    the LayerNorm would hand the branch the divided values, so a Mul feeds the product."""
    rng = np.random.default_rng(0)
    gamma = np.ones(CHANNELS, np.float32)
    gamma[OUTLIERS] = 30.0
    shape = [1, TOKENS, CHANNELS]

    def branch(name: str, op: str) -> onnx.GraphProto:
        node = helper.make_node(op, ["a"] if op == "Identity" else ["a", "a"], [f"{name}_out"])
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, shape)
        return helper.make_graph([node], name, [], [out])

    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["a"], name="ln", axis=-1),
        helper.make_node("MatMul", ["a", "w"], ["y"], name="fc"),
        helper.make_node(
            "If", ["flag"], ["z"], name="branch",
            then_branch=branch("then", "Identity"), else_branch=branch("else", "Add"),
        ),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "captured",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, shape),
        ],
        [
            numpy_helper.from_array(gamma, "g"),
            numpy_helper.from_array(np.zeros(CHANNELS, np.float32), "b"),
            numpy_helper.from_array(
                rng.normal(0, 0.1, (CHANNELS, CHANNELS)).astype(np.float32), "w"
            ),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = [{**feed, "flag": np.array(True)} for feed in _feeds(4, 1)]
    infos = feeds.model_inputs(model)
    source = DataSource(npz=_npz(tmp_path / "calib", data))
    ctx = PassContext(scratch_dir=tmp_path, calibration=DataSet(source, infos, {}, {}))
    result = Smooth().run(gs.import_onnx(model), ctx)
    assert ctx.details["activations"]["a"]["into"] == "a_smooth"
    smoothed = gs.export_onnx(result.graph)
    session = ort.InferenceSession(smoothed.SerializeToString(), providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for feed in data[:2]:
        for got, want in zip(session.run(None, feed), original.run(None, feed)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
