"""The precision pass: FP16/BF16 in the graph, casts only at boundaries (never chained), model
I/O kept, the default keep list, the data-driven FP16 range guard, graphs with Q/DQ, the
automatic search, and TensorRT for RTX accepting every graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper

import trt_rtx
from helpers import DIMS, MODELS, RANGES, model_feeds, ort_run
from trtopt import feeds
from trtopt.calibration import DataSet, DataSource
from trtopt.passes import PassContext
from trtopt.passes.precision import Precision
from trtopt.passes.quantize import Quantize

CNN, BERT = MODELS / "cnn_legacy.onnx", MODELS / "bert_dynamo.onnx"
TRT_DIMS = {"sequence": (1, 8, 16)}


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRTOPT_CACHE_DIR", str(tmp_path / "cache"))


def context(model: onnx.ModelProto, tmp_path: Path, ranges=None) -> PassContext:
    infos = feeds.model_inputs(model)
    data = DataSet(
        DataSource.model_validate({"synthetic": {"seed": 1}, "limit": 8}),
        infos,
        DIMS,
        ranges or {i.name: RANGES[i.name] for i in infos if i.name in RANGES},
    )
    return PassContext(
        scratch_dir=tmp_path,
        calibration=data,
        validation=model_feeds(model, 4, seed=7) if ranges is None else [],
    )


def lower(model: onnx.ModelProto, ctx: PassContext, **options):
    graph = gs.import_onnx(model)
    graph = Precision(Precision.Options.model_validate(options)).run(graph, ctx).graph
    result = gs.export_onnx(graph)
    onnx.checker.check_model(result, full_check=True)
    return result


def elem_types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: v.type.tensor_type.elem_type for v in values}


def assert_clean_casts(model):
    """No Cast feeding a Cast, no Cast to the type its input already has."""
    types = elem_types(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type != "Cast":
            continue
        source = producer.get(node.input[0])
        assert source is None or source.op_type != "Cast", f"cascaded casts at {node.name}"
        to = next(a.i for a in node.attribute if a.name == "to")
        assert types.get(node.input[0]) != to, f"no-op cast {node.name}"


def cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize(
    "path", [CNN, BERT, MODELS / "bert_legacy.onnx"], ids=["cnn", "bert-dynamo", "bert-legacy"]
)
def test_fp16_keeps_io_types_and_accuracy(tmp_path, path):
    source = onnx.load(str(path))
    ctx = context(source, tmp_path)
    model = lower(source, ctx)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [
        i.type.tensor_type.elem_type for i in source.graph.input
    ]
    assert all(o.type.tensor_type.elem_type == T.FLOAT for o in model.graph.output)
    assert [o.name for o in model.graph.output] == [o.name for o in source.graph.output]
    weights = [t for t in model.graph.initializer if t.data_type == T.FLOAT16]
    assert weights, "weights are converted"
    assert_clean_casts(model)
    data = model_feeds(source, 4, seed=3)
    for ref, got in zip(ort_run(source, data), ort_run(model, data)):
        for r, g in zip(ref, got):
            assert g.dtype == np.float32 and cosine(r, g) > 0.9999
    assert ctx.details["lowered_nodes"] > 0
    if "bert" in path.name:  # the default keep list: LayerNormalization stays FP32
        kept = {k["op"] for k in ctx.details["kept_fp32"]}
        assert "LayerNormalization" in kept
        trt_rtx.trt()
        assert trt_rtx.build(model, TRT_DIMS) > 0


def test_keep_by_node_regex_and_io_convert(tmp_path):
    source = onnx.load(str(CNN))
    model = lower(
        source,
        context(source, tmp_path),
        io="convert",
        keep_fp32={"op_types": [], "nodes": ["classifier"]},
    )
    assert model.graph.input[0].type.tensor_type.elem_type == T.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == T.FLOAT16
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    types = elem_types(model)
    assert types[gemm.input[0]] == T.FLOAT and types[gemm.output[0]] == T.FLOAT
    assert_clean_casts(model)


def test_bf16_graph_is_valid_and_builds(tmp_path):
    source = onnx.load(str(BERT))
    model = lower(source, context(source, tmp_path), dtype="bf16")
    assert any(t.data_type == T.BFLOAT16 for t in model.graph.initializer)
    assert_clean_casts(model)
    trt_rtx.trt()
    assert trt_rtx.build(model, TRT_DIMS) > 0


@pytest.mark.parametrize("path", [CNN, BERT], ids=["cnn", "bert"])
def test_fp16_over_qdq_graph_runs_and_builds(tmp_path, path):
    source = onnx.load(str(path))
    ctx = context(source, tmp_path)
    quantize = Quantize(Quantize.Options(calibrator="percentile"))
    graph = quantize.run(gs.import_onnx(source), ctx).graph
    int8 = gs.export_onnx(graph)
    model = lower(int8, ctx)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    scales = {t.name: t.data_type for t in model.graph.initializer}
    assert dq and all(scales[n.input[1]] == T.FLOAT16 for n in dq)
    assert_clean_casts(model)
    data = model_feeds(source, 2, seed=3)
    for ref, got in zip(ort_run(int8, data), ort_run(model, data)):
        # FP16 scales move a few INT8 rounding boundaries; the tiny CNN head amplifies that.
        assert cosine(ref[0], got[0]) > 0.98
    trt_rtx.trt()
    assert trt_rtx.build(model, TRT_DIMS) > 0


def _overflowing_model() -> onnx.ModelProto:
    """x -> Mul(1000) -> Mul(100) -> Div(1e5) -> y: the middle tensor exceeds FP16's range."""
    nodes = [
        helper.make_node("Mul", ["x", "a"], ["h1"], name="scale_up"),
        helper.make_node("Mul", ["h1", "b"], ["h2"], name="scale_more"),
        helper.make_node("Div", ["h2", "c"], ["h3"], name="scale_down"),
        helper.make_node("Relu", ["h3"], ["y"], name="relu"),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array(v, np.float32), n)
        for n, v in (("a", 1000.0), ("b", 100.0), ("c", 1e5))
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["batch", 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_guard_keeps_overflowing_nodes_and_says_why(tmp_path):
    source = _overflowing_model()
    ctx = context(source, tmp_path, ranges={"x": (1.0, 5.0)})
    model = lower(source, ctx)
    reasons = {k["node"]: k["reason"] for k in ctx.details["kept_fp32"]}
    assert set(reasons) == {"scale_more", "scale_down"}
    assert "reaches" in reasons["scale_more"] and "65504" in reasons["scale_more"]
    data = [{"x": np.full((2, 4), 4.0, np.float32)}]
    np.testing.assert_allclose(ort_run(model, data)[0][0], 4.0, rtol=1e-3)
    unguarded = lower(
        source, context(source, tmp_path, ranges={"x": (1.0, 5.0)}), guard={"enabled": False}
    )
    # Without the guard the FP16 graph is wrong (inf, or 1e5 saturated to 65504).
    assert not np.allclose(ort_run(unguarded, data)[0][0], 4.0, rtol=1e-2)


def test_auto_search_keeps_the_culprit(tmp_path):
    source = _overflowing_model()
    ctx = context(source, tmp_path, ranges={"x": (1.0, 5.0)})
    ctx.validation = [{"x": np.full((2, 4), 4.0, np.float32)}]
    lower(source, ctx, guard={"enabled": False}, auto={"metric": "max_abs", "max": 0.01})
    auto = ctx.details["auto"]
    assert auto["reached"]
    kept = {k["node"] for k in auto["kept"]}
    assert kept and kept <= {"scale_more", "scale_down"}


def _batchnorm_model(as_constant_node: bool, variance: float = 1e8) -> onnx.ModelProto:
    """x -> Mul(1e4) -> BatchNormalization (variance ``variance``) -> y: values of ~1e4
    normalized by sqrt(1e8) = 1e4, the statistics an initializer or a Constant node."""
    stats = {
        "scale": np.full(4, 1.5, np.float32),
        "bias": np.full(4, 0.25, np.float32),
        "mean": np.full(4, 100.0, np.float32),
        "var": np.full(4, variance, np.float32),
    }
    nodes = [helper.make_node("Mul", ["x", "gain"], ["h"], name="gain")]
    inits = [onnx.numpy_helper.from_array(np.array(1e4, np.float32), "gain")]
    for name, values in stats.items():
        tensor = onnx.numpy_helper.from_array(values, name)
        if as_constant_node:
            nodes.append(
                helper.make_node("Constant", [], [name], name=f"{name}_node", value=tensor)
            )
        else:
            inits.append(tensor)
    nodes.append(
        helper.make_node(
            "BatchNormalization", ["h", "scale", "bias", "mean", "var"], ["y"], name="norm"
        )
    )
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", T.FLOAT, ["batch", 4, 2, 2])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["batch", 4, 2, 2])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("as_constant_node", [False, True], ids=["initializer", "constant-node"])
def test_guard_sees_constants_without_data(tmp_path, as_constant_node):
    """A BatchNormalization variance of 1e8 stays FP32 (converted it saturates to 65504, cast
    from a Constant node it is inf): no calibration data needed."""
    source = _batchnorm_model(as_constant_node)
    ctx = PassContext(scratch_dir=tmp_path)
    model = lower(source, ctx)
    reasons = {k["node"]: k["reason"] for k in ctx.details["kept_fp32"]}
    assert reasons["norm"] == "guard: constant 'var' reaches 1e+08 (FP16 max 65504)"
    data = [{"x": np.random.default_rng(0).uniform(-1, 1, (2, 4, 2, 2)).astype(np.float32)}]
    expected = ort_run(source, data)[0][0]
    np.testing.assert_allclose(ort_run(model, data)[0][0], expected, rtol=1e-2, atol=1e-2)
    # Without the guard FP16 gets it wrong: an initializer saturates to 65504; a Constant
    # node's value is cast to FP16, inf, and the output is the bias alone (as ONNX Runtime
    # computes it with its graph optimizations; without them its CPU happens to return the
    # FP32 result).
    unguarded = lower(source, PassContext(scratch_dir=tmp_path), guard={"enabled": False})
    if as_constant_node:
        cast = next(n for n in unguarded.graph.node if n.op_type == "Cast" and n.input[0] == "var")
        assert cast.attribute[0].i == T.FLOAT16
        session = ort.InferenceSession(
            unguarded.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        np.testing.assert_array_equal(session.run(None, data[0])[0], 0.25)
    else:
        var = next(t for t in unguarded.graph.initializer if t.name.startswith("var"))
        assert onnx.numpy_helper.to_array(var).max() == 65504
        assert not np.allclose(ort_run(unguarded, data)[0][0], expected, rtol=1e-2, atol=1e-2)


def test_guard_lets_stand_ins_for_infinity_saturate_and_weighs_underflow_by_magnitude(tmp_path):
    """An attention mask's -3.4e38 still masks as -65504 (the Where stays lowered); weights
    whose decayed entries flush lose nothing that matters (lowered), an epsilon of 1e-12 loses
    all it has (kept)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 4)).astype(np.float32)
    weight[0, :2] = 1e-9  # decayed entries: flushed to 0 in FP16
    nodes = [
        helper.make_node("Where", ["mask", "zero", "lowest"], ["m"], name="mask"),
        helper.make_node("Add", ["x", "m"], ["a"], name="masked"),
        helper.make_node("MatMul", ["a", "w"], ["b"], name="decayed"),
        helper.make_node("Add", ["b", "eps"], ["y"], name="epsilon"),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        onnx.numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "lowest"),
        onnx.numpy_helper.from_array(weight, "w"),
        onnx.numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("mask", T.BOOL, [2, 4]),
            helper.make_tensor_value_info("x", T.FLOAT, [2, 4]),
        ],
        [helper.make_tensor_value_info("y", T.FLOAT, [2, 4])],
        inits,
    )
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    ctx = PassContext(scratch_dir=tmp_path)
    lower(source, ctx)
    reasons = {k["node"]: k["reason"] for k in ctx.details["kept_fp32"]}
    assert set(reasons) == {"epsilon"}
    assert "would flush 100% of its magnitude" in reasons["epsilon"]


def test_bf16_keeps_ops_whose_onnx_schema_has_no_bf16(tmp_path):
    """ONNX's Conv, pooling and HardSigmoid take BF16 only from opset 22: at 18 they stay FP32
    (the graph is valid ONNX), the rest is lowered."""
    source = onnx.load(str(CNN))
    ctx = context(source, tmp_path)
    model = lower(source, ctx, dtype="bf16")
    reasons = {k["node"]: k["reason"] for k in ctx.details["kept_fp32"]}
    convs = [n.name for n in source.graph.node if n.op_type == "Conv"]
    assert convs and all("takes no bf16" in reasons[name] for name in convs)
    assert "Conv-11 (opset 18)" in reasons[convs[0]]
    assert ctx.details["lowered_nodes"] > 0
    assert_clean_casts(model)
