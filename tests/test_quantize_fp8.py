"""The quantize pass with dtype fp8: FLOAT8E4M3FN Q/DQ at opset 19, scales amax / 448 from the
INT8 calibration, TensorRT's FP8 placement rules with their reasons, ONNX Runtime running the
graphs (accuracy on a pretrained model), TensorRT for RTX building them for SM89 and SM120 and
refusing SM86, the lint rule, and INT8 left as it was."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import trt_rtx
from helpers import DIMS, MODELS, RANGES, ort_run
from test_public_models import public_models  # noqa: F401  (the fixture: pretrained models)
from trtopt import feeds
from trtopt.calibration import DataSet, DataSource
from trtopt.lint import lint_model
from trtopt.passes import PassContext
from trtopt.passes.graph_tools import require_opset
from trtopt.passes.lint import Lint
from trtopt.passes.quantize import FP8_MAX, INT8_MAX, Quantize

FP8 = TensorProto.FLOAT8E4M3FN
CNN, BERT = MODELS / "cnn_legacy.onnx", MODELS / "bert_dynamo.onnx"
PADDLE_CLS = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"


def quantize(model: onnx.ModelProto, tmp_path, data: DataSet | None = None, **options):
    if data is None:
        infos = feeds.model_inputs(model)
        ranges = {i.name: RANGES[i.name] for i in infos if i.name in RANGES}
        source = DataSource.model_validate({"synthetic": {"seed": 1}, "limit": 8})
        data = DataSet(source, infos, DIMS, ranges)
    tmp_path.mkdir(parents=True, exist_ok=True)
    ctx = PassContext(scratch_dir=tmp_path, calibration=data, artifacts_dir=tmp_path)
    pass_ = Quantize(Quantize.Options.model_validate(options))
    graph = pass_.run(gs.import_onnx(model), ctx).graph
    result = gs.export_onnx(graph)
    onnx.checker.check_model(result, full_check=True)
    return result, ctx


def inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_fp8_graph_types_scales_and_zero_points(tmp_path):
    """Q/DQ of FLOAT8E4M3FN at opset 19, zero points FP8 0, activations one scale of
    amax / 448 (the INT8 calibration's amax: INT8's scale * 127), weights FP8 per output
    channel at channel amax / 448."""
    source = onnx.load(str(BERT))
    fp8, ctx = quantize(source, tmp_path / "fp8", dtype="fp8", calibrator="minmax")
    int8, _ = quantize(source, tmp_path / "int8", calibrator="minmax")
    assert default_opset(fp8) == 19 and default_opset(source) == 18
    assert ctx.details["dtype"] == "fp8" and ctx.details["opset"]["to"] == 19
    values, constants = inits(fp8), inits(source)
    quantizers = [n for n in int8.graph.node if n.op_type == "QuantizeLinear"]
    int8_scales = {n.input[0]: inits(int8)[n.input[1]] for n in quantizers}
    typed = {v.name: v.type.tensor_type.elem_type for v in fp8.graph.value_info}
    qdq = [n for n in fp8.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and ctx.details["quantized_nodes"] == 17 and ctx.details["skipped"] == {}
    for node in qdq:
        zero = values[node.input[2]]
        assert zero.data_type == FP8 and not numpy_helper.to_array(zero).astype(np.float32).any()
        scale = numpy_helper.to_array(values[node.input[1]])
        if node.op_type == "QuantizeLinear":  # an activation: one scale, amax / 448
            assert typed[node.output[0]] == FP8 and scale.shape == ()
            amax = float(numpy_helper.to_array(int8_scales[node.input[0]])) * INT8_MAX
            assert scale == pytest.approx(amax / FP8_MAX, rel=1e-6)
        elif node.input[0] in values:  # a weight, stored in FP8
            stored = values[node.input[0]]
            assert stored.data_type == FP8
            original = numpy_helper.to_array(constants[node.input[0].removesuffix("_quantized")])
            axis = next(a.i for a in node.attribute if a.name == "axis")
            others = tuple(i for i in range(original.ndim) if i != axis)
            np.testing.assert_allclose(scale, np.abs(original).max(axis=others) / FP8_MAX, 1e-6)
            shape = [-1 if i == axis else 1 for i in range(original.ndim)]
            dequantized = numpy_helper.to_array(stored).astype(np.float32) * scale.reshape(shape)
            # E4M3 keeps 3 mantissa bits: within 1/16 of each value, or half the finest step.
            step = scale.reshape(shape) * 2.0**-9
            assert np.all(np.abs(dequantized - original) <= np.abs(original) / 16 + step)
    assert not (tmp_path / "fp8" / "calibration.cache").exists()  # TensorRT's INT8 file only


def fp8_cases() -> onnx.ModelProto:
    """One node per FP8 placement rule, and two that pass them all."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w_rgb"], ["a"], "first_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w_ok"], ["b"], "good_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["b", "w_dw"], ["c"], "depthwise", group=32, pads=[1] * 4),
        helper.make_node("Conv", ["c", "w_7x7"], ["d"], "wide_conv", pads=[3, 3, 3, 3]),
        helper.make_node("ConvTranspose", ["d", "w_up"], ["e"], "deconv", strides=[2, 2]),
        helper.make_node("MaxPool", ["e"], ["f"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["f", "w_ok2"], ["g"], "conv_after_pool"),
        helper.make_node("GlobalAveragePool", ["g"], ["h"], "gap"),
        helper.make_node("Flatten", ["h"], ["i"], "flatten"),
        helper.make_node("MatMul", ["i", "w_fc"], ["j"], "good_matmul"),
        helper.make_node("MatMul", ["j", "w_score"], ["y"], "score_gemv"),
    ]
    weights = [
        weight("w_rgb", 32, 3, 3, 3),
        weight("w_ok", 32, 32, 3, 3),
        weight("w_dw", 32, 1, 3, 3),
        weight("w_7x7", 32, 32, 7, 7),
        weight("w_up", 32, 32, 2, 2),
        weight("w_ok2", 32, 32, 1, 1),
        weight("w_fc", 32, 64),
        weight("w_score", 64, 1),
    ]
    graph = helper.make_graph(
        nodes,
        "fp8_rules",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fp8_leaves_what_tensorrt_cannot_run_in_fp8_with_the_rule_and_reason(tmp_path):
    source = fp8_cases()
    infos = feeds.model_inputs(source)
    data = DataSet(DataSource(synthetic={}, limit=4), infos)
    model, ctx = quantize(source, tmp_path, data, dtype="fp8")
    skipped = ctx.details["skipped"]
    assert {node: why.split(":")[0] for node, why in skipped.items()} == {
        "first_conv": "fp8-conv-channels",
        "depthwise": "fp8-conv-channels",
        "wide_conv": "fp8-conv-filter",
        "deconv": "fp8-op",
        "pool": "fp8-op",
        "gap": "fp8-op",
        "score_gemv": "fp8-gemv",
    }
    assert "input channels per group 3 not a multiple of 16" in skipped["first_conv"]
    assert "7x7 has 49 taps" in skipped["wide_conv"] and "N=1" in skipped["score_gemv"]
    producer = producers(model)
    dequantized = {
        n.name
        for n in model.graph.node
        if n.input and all(producer.get(i, n).op_type == "DequantizeLinear" for i in n.input[:2])
    }
    assert {"good_conv", "conv_after_pool", "good_matmul"} <= dequantized
    assert not dequantized & set(skipped)
    assert set(ctx.details["placement"]) == {"good_conv", "conv_after_pool", "good_matmul"}
    # INT8 has no such rules: every one of them is quantized.
    _, int8 = quantize(source, tmp_path / "int8", data)
    assert set(skipped) <= set(int8.details["placement"])
    got = ort_run(model, [data.first()])[0][0]
    assert np.isfinite(got).all()


WORDS = [
    "invoice",
    "total",
    "amount",
    "date",
    "receipt",
    "price",
    "tax",
    "number",
    "street",
    "city",
    "model",
    "engine",
]


def text_lines(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Rendered text lines as PaddleOCR's direction classifier takes them: dark words on a light
    background, half of them upside down, 48x192, scaled to [-1, 1] (Pillow's own font)."""
    image_module = pytest.importorskip("PIL.Image")
    from PIL import ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        paper, ink = int(rng.integers(170, 256)), int(rng.integers(0, 90))
        image = image_module.new("L", (384, 96), paper)
        font = ImageFont.load_default(size=int(rng.integers(48, 76)))
        words = " ".join(rng.choice(WORDS, int(rng.integers(1, 4))))
        ImageDraw.Draw(image).text((int(rng.integers(0, 20)), 4), words, fill=ink, font=font)
        pixels = np.asarray(image.resize((192, 48)), np.float32)
        pixels = pixels + rng.normal(0, 4, pixels.shape)
        if rng.random() < 0.5:
            pixels = pixels[::-1, ::-1]
        rgb = np.repeat(np.clip(pixels, 0, 255)[None, None], 3, axis=1)
        found.append({"x": ((rgb / 255 - 0.5) / 0.5).astype(np.float32)})
    return found


@pytest.mark.slow
def test_fp8_on_a_pretrained_model_runs_on_onnxruntime_at_least_as_well_as_int8(
    tmp_path,
    public_models,  # noqa: F811
):
    """PaddleOCR's text direction classifier (pretrained, opset 11: raised to 19 by ONNX's
    version converter): FP8 with the defaults keeps cosine >= 0.97 on every held-out feed and
    beats the default INT8; measured with the same calibrator and data."""

    def load() -> onnx.ModelProto:  # one batch dim by name, the classifier's 48x192 lines
        model = onnx.load(str(public_models / PADDLE_CLS))
        batch, _, height, width = model.graph.input[0].type.tensor_type.shape.dim
        batch.dim_param, height.dim_value, width.dim_value = "batch", 48, 192
        return model

    source = load()
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for index, feed in enumerate(text_lines(12, seed=1)):
        np.savez(calibration / f"{index:02d}.npz", **feed)
    infos = feeds.model_inputs(source)
    held_out = text_lines(12, seed=2)
    reference = ort_run(source, held_out)

    def worst(model):
        return min(cosine(r[0], g[0]) for r, g in zip(reference, ort_run(model, held_out)))

    results = {}
    for dtype in ("int8", "fp8"):
        data = DataSet(DataSource(npz=str(calibration / "*.npz")), infos)
        model, ctx = quantize(load(), tmp_path / dtype, data, dtype=dtype)
        results[dtype] = (worst(model), model, ctx)
    fp8_cosine, fp8, ctx = results["fp8"]
    assert ctx.details["opset"] == {"from": 11, "to": 19, "by": "onnx.version_converter"}
    assert default_opset(fp8) == 19 and ctx.details["quantized_nodes"] > 0
    assert fp8_cosine >= 0.97 and fp8_cosine >= results["int8"][0], results
    trt_rtx.trt()
    assert trt_rtx.build(fp8, {"batch": (1, 1, 2)}) > 0


def fp8_bert(tmp_path) -> onnx.ModelProto:
    model, _ = quantize(onnx.load(str(BERT)), tmp_path, dtype="fp8")
    return model


def test_tensorrt_rtx_builds_fp8_for_sm89_and_sm120_and_refuses_sm86(tmp_path):
    trt_rtx.trt()  # skips first where TensorRT for RTX is missing
    model = fp8_bert(tmp_path)
    assert trt_rtx.build(model, {"sequence": (1, 8, 16)}) > 0  # SM89 + SM120
    fixed = {"batch": (1, 1, 1), "sequence": (8, 8, 8)}
    assert trt_rtx.build_for(model, ["SM86"], fixed) is None  # "fp8_e4m3" on sm86


def test_lint_fp8_needs_compute_capability_8_9(tmp_path):
    model = fp8_bert(tmp_path)

    def found(**kwargs):
        report = lint_model(model, "tensorrt-rtx", parse=False, **kwargs)
        return [f for f in report.findings if f.rule == "fp8-compute-capability"]

    (older,) = found(compute_capabilities=["8.6", "8.9", "sm75"])
    assert older.level == "error" and "8.6, 7.5" in older.message and older.node
    assert older.op in ("QuantizeLinear", "DequantizeLinear")
    assert found(compute_capabilities=["8.9", "12.0"]) == []
    (unknown,) = found()
    assert unknown.level == "warning" and "8.9" in unknown.message
    int8, _ = quantize(onnx.load(str(BERT)), tmp_path / "int8")
    assert [f for f in lint_model(int8, parse=False).findings if f.rule.startswith("fp8")] == []
    # The lint pass takes them as a recipe writes them.
    assert Lint.Options.model_validate({"compute_capabilities": [8.9, 12.0]}).compute_capabilities
    with pytest.raises(ValueError, match="not a compute capability"):
        Lint.Options.model_validate({"compute_capabilities": ["ampere"]})


def test_int8_is_as_it_was(tmp_path):
    """dtype int8 (the default) writes INT8 Q/DQ at the model's opset (13 at least), its
    TensorRT calibration cache, and the details it always did; the caller's model is not
    changed by the pass (graphsurgeon shares its opset entries)."""
    source = onnx.load(str(CNN))
    model, ctx = quantize(source, tmp_path)
    assert default_opset(source) == default_opset(model) == 18
    assert set(ctx.details) == {
        "placement",
        "calibration",
        "quantized_nodes",
        "excluded_nodes",
        "int8_coverage",
    }
    assert (tmp_path / "calibration.cache").read_text().startswith("TRT-")
    types = {t.data_type for t in model.graph.initializer}
    assert FP8 not in types and TensorProto.INT8 in types
    old = onnx.load(str(MODELS / "bert_legacy.onnx"))
    old.opset_import[0].version = 12
    graph = gs.import_onnx(old)
    require_opset(graph, 13)
    assert old.opset_import[0].version == 12 and graph.opset == 13


def test_fp8_leaves_a_model_it_cannot_raise_to_opset_19_unchanged(tmp_path):
    source = fp8_cases()
    source.opset_import[0].version = 12
    relu = helper.make_node("Relu", ["a"], ["b"])
    opsets = [helper.make_opsetid("", 12)]
    # A local function: raise_opset refuses opset 12, the version converter knows no functions.
    source.functions.append(helper.make_function("local", "f", ["a"], ["b"], [relu], opsets))
    source.opset_import.append(helper.make_opsetid("local", 1))
    infos = feeds.model_inputs(source)
    data = DataSet(DataSource(synthetic={}, limit=2), infos)
    model, ctx = quantize(source, tmp_path, data, dtype="fp8")
    assert ctx.details["quantized_nodes"] == 0 and "local functions" in ctx.warnings[0]
    assert not [n for n in model.graph.node if n.op_type.endswith("QuantizeLinear")]
    assert default_opset(model) == 12


def test_fp8_weights_are_e4m3_rounded(tmp_path):
    """The stored weights are ml_dtypes' round-to-nearest-even E4M3 of weight / scale."""
    model = fp8_bert(tmp_path)
    stored = next(t for t in model.graph.initializer if t.data_type == FP8 and len(t.dims) == 2)
    values = numpy_helper.to_array(stored)
    assert values.dtype == ml_dtypes.float8_e4m3fn
    assert np.abs(values.astype(np.float32)).max() == FP8_MAX
