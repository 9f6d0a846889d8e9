"""The quantize pass: TensorRT's Q/DQ placement rules, accuracy on ONNX Runtime, TensorRT for
RTX accepting every graph, exclusions, the automatic sensitivity search, and the recipes."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import trt_rtx
from helpers import DIMS, MODELS, RANGES, model_feeds, ort_run, run_cli
from test_public_models import public_models  # noqa: F401  (the fixture: pretrained models)
from test_quantize_fp8 import PADDLE_CLS, text_lines
from trtopt import feeds
from trtopt.calibration import DataSet, DataSource, ranges, split_graph
from trtopt.errors import EXIT_USER
from trtopt.passes import PassContext
from trtopt.passes.quantize import Quantize
from trtopt.passes.sensitivity import AutoOptions, Judge, metric_values, run

CNN, BERT = MODELS / "cnn_legacy.onnx", MODELS / "bert_dynamo.onnx"
TRT_DIMS = {"sequence": (1, 8, 16)}


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRTOPT_CACHE_DIR", str(tmp_path / "cache"))


def quantize(path: Path, tmp_path: Path, **options) -> tuple[onnx.ModelProto, PassContext]:
    model = onnx.load(str(path))
    infos = feeds.model_inputs(model)
    data = DataSet(
        DataSource.model_validate({"synthetic": {"seed": 1}, "limit": 16}),
        infos,
        DIMS,
        {i.name: RANGES[i.name] for i in infos},
    )
    ctx = PassContext(
        scratch_dir=tmp_path,
        calibration=data,
        validation=model_feeds(model, 4, seed=7),
        artifacts_dir=tmp_path,
    )
    pass_ = Quantize(Quantize.Options.model_validate(options))
    result = gs.export_onnx(pass_.run(gs.import_onnx(model), ctx).graph)
    onnx.checker.check_model(result, full_check=True)
    return result, ctx


def nodes_by_output(model):
    return {o: n for n in model.graph.node for o in n.output}


def initializer(model, name):
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def cosine(a, b):
    return float(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))


def test_cnn_placement_follows_tensorrt_rules(tmp_path):
    model, ctx = quantize(CNN, tmp_path, calibrator="minmax")
    producer = nodes_by_output(model)
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    for node in convs:
        data, weight = producer[node.input[0]], producer[node.input[1]]
        # Data and weight inputs come from DequantizeLinear; the bias stays float.
        assert data.op_type == "DequantizeLinear" and weight.op_type == "DequantizeLinear"
        assert len(node.input) < 3 or node.input[2] not in producer
        assert initializer(model, weight.input[0]).dtype == np.int8
        axis = next(a.i for a in weight.attribute if a.name == "axis")
        scales = initializer(model, weight.input[1])
        if node.op_type == "Conv":  # per output channel: [C_out, C_in, kh, kw] axis 0
            assert axis == 0 and scales.shape == (
                initializer(model, node.input[1].replace("_dequantized", "_quantized")).shape[0],
            )
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = initializer(model, node.input[2])
            assert zero.dtype == np.int8 and not zero.any()  # symmetric: zero point 0
        if node.op_type == "QuantizeLinear":
            assert initializer(model, node.input[1]).shape == ()  # activations per tensor
            # Never on a Conv's own output unless it is a residual (skip) input of an Add.
            source = producer.get(node.input[0])
            if source is not None and source.op_type == "Conv":
                consumers = [n for n in model.graph.node if node.output[0] in n.input]
                assert consumers
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    for add in adds:  # residual rule: exactly one input of each residual Add is dequantized
        assert sum(producer[i].op_type == "DequantizeLinear" for i in add.input) == 1
    pool = next(n for n in model.graph.node if n.op_type == "GlobalAveragePool")
    assert producer[pool.input[0]].op_type == "DequantizeLinear"  # pooling rule
    assert ctx.details["quantized_nodes"] == 11
    assert (tmp_path / "calibration.cache").read_text().startswith("TRT-")


def test_gemm_weight_axis_and_int32_bias_never_emitted(tmp_path):
    model, _ = quantize(CNN, tmp_path)
    producer = nodes_by_output(model)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    weight = producer[gemm.input[1]]
    assert next(a.i for a in weight.attribute if a.name == "axis") == (0 if trans_b else 1)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            assert (
                initializer(model, node.input[0]).dtype == np.int8
                if node.input[0] not in producer
                else True
            )


def test_bert_has_no_qdq_in_shape_subgraphs_and_quantizes_every_matmul(tmp_path):
    model, _ = quantize(BERT, tmp_path)
    producer = nodes_by_output(model)
    shape_inputs = {"Reshape": 1, "Expand": 1, "Range": 0, "Slice": 1, "Unsqueeze": 1}
    for node in model.graph.node:
        index = shape_inputs.get(node.op_type)
        if index is not None and index < len(node.input) and node.input[index] in producer:
            seen, stack = set(), [node.input[index]]
            while stack:  # the whole upstream shape computation
                name = stack.pop()
                if name in seen or name not in producer:
                    continue
                seen.add(name)
                assert producer[name].op_type not in ("QuantizeLinear", "DequantizeLinear")
                stack += list(producer[name].input)
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            assert all(producer[i].op_type == "DequantizeLinear" for i in node.input[:2])


@pytest.mark.parametrize("path", [CNN, BERT], ids=["cnn", "bert"])
def test_accuracy_on_onnxruntime(tmp_path, path):
    options = {"exclude": {"op_types": ["Gemm"]}} if path == CNN else {}
    model, _ = quantize(path, tmp_path, calibrator="percentile", **options)
    data = model_feeds(onnx.load(str(path)), 4, seed=11)
    floor = 0.95 if path == CNN else 0.99  # the tiny CNN has only 16 channels per layer
    for ref, got in zip(ort_run(onnx.load(str(path)), data), ort_run(model, data)):
        assert cosine(ref[0], got[0]) > floor


@pytest.mark.parametrize(
    ("path", "calibrator"),
    [
        (MODELS / "cnn_dynamo.onnx", "minmax"),
        (MODELS / "cnn_dynamo.onnx", "mse"),
        (MODELS / "bert_legacy.onnx", "entropy"),
        (BERT, "percentile"),
    ],
    ids=["cnn-minmax", "cnn-mse", "bert-legacy-entropy", "bert-dynamo-percentile"],
)
def test_tensorrt_parses_and_builds_every_int8_graph(tmp_path, path, calibrator):
    trt_rtx.trt()
    model, _ = quantize(path, tmp_path, calibrator=calibrator)
    assert trt_rtx.build(model, TRT_DIMS) > 0


def test_per_tensor_weights_build(tmp_path):
    trt_rtx.trt()
    model, _ = quantize(CNN, tmp_path, per_channel=False)
    assert all(
        not any(a.name == "axis" for a in n.attribute)
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
    )
    assert trt_rtx.build(model) > 0


def test_exclusions_by_op_type_and_node_regex(tmp_path):
    model, _ = quantize(BERT, tmp_path, exclude={"op_types": ["Gemm"], "nodes": ["matmul_1$"]})
    producer = nodes_by_output(model)
    for node in model.graph.node:
        dequantized = any(
            producer.get(i) and producer[i].op_type == "DequantizeLinear" for i in node.input
        )
        if node.op_type == "Gemm" or node.name.endswith("matmul_1"):
            assert not dequantized, node.name


def test_quantized_fp32_weights_are_released(tmp_path):
    """Once the pass returns, no FP32 weight it replaced by INT8 is alive (the caller's export
    would otherwise hold the weights twice)."""
    model = onnx.load(str(CNN))
    graph = gs.import_onnx(model)
    weights = [t for t in graph.tensors().values() if isinstance(t, gs.Constant) and t.name]
    refs = {t.name: weakref.ref(t.values) for t in weights if np.ndim(t.values) == 4}
    infos = feeds.model_inputs(model)
    data = DataSet(DataSource(synthetic={}, limit=2), infos, DIMS, RANGES)
    del weights
    ctx = PassContext(scratch_dir=tmp_path, calibration=data)
    out = Quantize(Quantize.Options(cache=False)).run(graph, ctx).graph
    assert refs and all(ref() is None for ref in refs.values())
    stored = {t.name: t for t in out.tensors().values() if isinstance(t, gs.Constant)}
    assert all(stored[f"{name}_quantized"].values.dtype == np.int8 for name in refs)


def test_asymmetric_is_refused_with_tensorrts_reason():
    with pytest.raises(ValueError, match="zero point"):
        Quantize.Options(symmetric=False)


def test_auto_search_keeps_the_fewest_layers(tmp_path):
    options = {"calibrator": "minmax", "auto": {"metric": "cosine", "min": 0.995}}
    model, ctx = quantize(CNN, tmp_path, **options)
    auto = ctx.details["auto"]
    assert auto["reached"] and auto["value"] >= 0.995
    assert auto["value_all_lowered"] < 0.995
    assert auto["evaluations"] > len(auto["kept"]) and auto["seconds"] > 0
    kept = [k["node"] for k in auto["kept"]]
    assert "/net/classifier/classifier.1/Gemm" in kept  # the standardized head is the culprit
    assert 1 <= len(kept) < ctx.details["quantized_nodes"] + len(kept)
    # Minimal: putting back any single kept layer breaks the target.
    data = model_feeds(onnx.load(str(CNN)), 4, seed=7)
    ref = ort_run(onnx.load(str(CNN)), data)
    got = ort_run(model, data)
    assert min(cosine(r[0], g[0]) for r, g in zip(ref, got)) >= 0.995


@pytest.mark.parametrize("path", [CNN, BERT], ids=["cnn", "bert"])
def test_judged_candidates_run_as_their_whole_export(tmp_path, path):
    """The search hands ONNX Runtime each candidate's weights as arrays (external data): it
    must run exactly what the exported graph runs, Q/DQ fusions on constant weights included
    (weights fed as graph inputs would not be constants, and would give other numbers)."""
    quantized, _ = quantize(path, tmp_path, calibrator="minmax")
    graph = gs.import_onnx(quantized)
    light, weights = split_graph(graph, external=True)
    assert weights and not any(
        t.HasField("raw_data") for t in light.graph.initializer if t.name in weights
    )
    data = model_feeds(onnx.load(str(path)), 2, seed=3)
    options = AutoOptions(metric="cosine", min=0.99)
    whole = Judge(gs.export_onnx(graph), data, options)
    handed = Judge((light, weights), data, options)
    for a, b in zip(whole.reference, handed.reference):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert handed.reference_model is None  # only the outputs are kept


def test_compile_reports_excluded_nodes_and_fails_bad_options(tmp_path, write_recipe, recipe_for):
    recipe = recipe_for(CNN, output=str(tmp_path / "out"))
    recipe["passes"] = [
        "cleanup",
        {"quantize": {"calibrator": "percentile", "auto": {"metric": "top1", "min": 1.0}}},
    ]
    recipe["check"].update(
        thresholds={"max_abs": 5.0, "min_cosine": 0.9}, outputs={"logits": {"class_scores": True}}
    )
    result = run_cli("compile", str(write_recipe(recipe)))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    quantize_record = report["passes"][1]
    assert quantize_record["details"]["calibration"]["synthetic"] is True
    assert any("synthetic" in w for w in report["warnings"])
    assert (tmp_path / "out" / "calibration.cache").is_file()
    kept = report["kept_in_higher_precision"]
    assert [k["node"] for k in kept] == [
        k["node"] for k in quantize_record["details"]["auto"]["kept"]
    ]
    recipe["passes"] = [{"quantize": {"symmetric": False}}]
    result = run_cli("compile", str(write_recipe(recipe)))
    assert result.returncode == EXIT_USER and "zero point" in result.stdout + result.stderr


@pytest.mark.slow
def test_calibrator_auto_keeps_the_best_scoring_ranges_on_a_pretrained_model(
    tmp_path,
    monkeypatch,
    public_models,  # noqa: F811
):
    """PaddleOCR's text direction classifier in INT8: calibrator auto judges entropy, minmax
    and percentile ranges from one collection of histograms, keeps the best, and ships a graph
    whose held-out score is that one's (measured as the judge measures it)."""
    source = onnx.load(str(public_models / PADDLE_CLS))
    batch, _, height, width = source.graph.input[0].type.tensor_type.shape.dim
    batch.dim_param, height.dim_value, width.dim_value = "batch", 48, 192
    for index, feed in enumerate(text_lines(8, seed=1)):
        np.savez(tmp_path / f"{index:02d}.npz", **feed)
    data = DataSet(DataSource(npz=str(tmp_path / "*.npz")), feeds.model_inputs(source))
    held_out = text_lines(8, seed=2)
    ctx = PassContext(scratch_dir=tmp_path, calibration=data, validation=held_out)
    passes = []
    streamed = ranges.collect
    monkeypatch.setattr(ranges, "collect", lambda *a, **k: passes.append(1) or streamed(*a, **k))
    options = Quantize.Options.model_validate({"calibrator": "auto"})
    model = gs.export_onnx(Quantize(options).run(gs.import_onnx(source), ctx).graph)
    calibration = ctx.details["calibration"]
    scores = calibration["scores"]
    assert list(scores) == ["entropy", "minmax", "percentile"] and len(passes) == 1
    best = max(scores, key=scores.get)
    assert calibration["calibrator"] == best and scores[best] > scores["entropy"], scores
    shipped, _ = metric_values("cosine", run(source, held_out), run(model, held_out))
    assert shipped == pytest.approx(scores[best], abs=1e-6)
