"""The quantize pass with dtype int4: MatMul and Gemm weights as block-wise INT4 behind a
DequantizeLinear (opset 21, axis K, block_size), RTN and AWQ, the placement rules with their
reasons, options checked with their place in the recipe, ONNX Runtime running the graphs,
AWQ against RTN on PaddleOCR's pretrained recognizer, TensorRT for RTX building them for
SM80+ and refusing SM75, and the lint rule."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import trt_rtx
import trtopt
from helpers import ort_run
from test_public_models import public_models  # noqa: F401  (the fixture: pretrained models)
from trtopt import RecipeError, feeds
from trtopt.calibration import DataSet, DataSource
from trtopt.lint import lint_model
from trtopt.passes import PassContext
from trtopt.passes.blockwise import dequantize
from trtopt.passes.quantize import Quantize

INT4 = TensorProto.INT4
PADDLE_REC = "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
REC_DIMS = {"batch": (1, 1, 2)}


def quantize(model: onnx.ModelProto, tmp_path, data: DataSet | None = None, **options):
    ctx = PassContext(scratch_dir=tmp_path, calibration=data)
    pass_ = Quantize(Quantize.Options.model_validate({"dtype": "int4", **options}))
    result = gs.export_onnx(pass_.run(gs.import_onnx(model), ctx).graph)
    onnx.checker.check_model(result, full_check=True)
    return result, ctx


def inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every weight by the name of its MatMul/Gemm (initializers and Constant nodes)."""
    values = {k: numpy_helper.to_array(v) for k, v in inits(model).items()}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(attrs(node)["value"])
    return {
        n.name: values[n.input[1]]
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm") and n.input[1] in values
    }


def dequantized(model: onnx.ModelProto) -> dict[str, tuple[onnx.NodeProto, np.ndarray]]:
    """Per MatMul/Gemm fed by an INT4 DequantizeLinear: that node and what it computes."""
    values, producer = inits(model), {o: n for n in model.graph.node for o in n.output}
    found = {}
    for node in model.graph.node:
        dq = producer.get(node.input[1]) if node.op_type in ("MatMul", "Gemm") else None
        if dq is not None and dq.op_type == "DequantizeLinear":
            q, scale = (numpy_helper.to_array(values[name]) for name in dq.input)
            axis, block = attrs(dq)["axis"], attrs(dq)["block_size"]
            found[node.name] = (dq, dequantize(q, scale, axis, block))
    return found


def cases() -> onnx.ModelProto:
    """One product per INT4 rule and block case: K 64 (blocks of 32), K 48 (no 32 divides it:
    blocks of 24), K 20 (one block shorter than 32), a Gemm with transB (blocks along axis 1),
    an activation x activation MatMul, a 3-D constant B."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("MatMul", ["x", "w64"], ["a"], "k64"),
        helper.make_node("MatMul", ["a", "w48"], ["b"], "k48"),
        helper.make_node("Gemm", ["b", "wt"], ["c"], "gemm_transposed", transB=1),
        helper.make_node("MatMul", ["c", "w20"], ["d"], "k20"),
        helper.make_node("MatMul", ["d", "d_t"], ["e"], "scores"),
        helper.make_node("Transpose", ["d"], ["d_t"], "transpose"),
        helper.make_node("Unsqueeze", ["e", "zero"], ["f"], "unsqueeze"),
        helper.make_node("MatMul", ["f", "w3d"], ["y"], "batched"),
    ]
    inits_ = [
        weight("w64", 64, 48),
        weight("w48", 48, 64),
        weight("wt", 20, 64),
        weight("w20", 20, 16),
        weight("w3d", 1, 4, 8),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "int4_rules",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])],
        inits_,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def case_data(model: onnx.ModelProto, samples: int = 8) -> DataSet:
    source = DataSource.model_validate({"synthetic": {"seed": 1}, "limit": samples})
    return DataSet(source, feeds.model_inputs(model))


def test_int4_blocks_weights_along_k_within_half_a_step(tmp_path):
    source = cases()
    model, ctx = quantize(source, tmp_path, block_size=32, method="rtn")
    assert next(o.version for o in model.opset_import if o.domain == "") == 21
    assert ctx.details["int4"] == {
        "method": "rtn",
        "block_size": 32,
        "block_sizes": {"k48": 24},
    }
    assert {node: why.split(":")[0] for node, why in ctx.details["skipped"].items()} == {
        "scores": "int4-weight",
        "batched": "int4-weight-rank",
    }
    assert ctx.details["quantized_nodes"] == 4 and ctx.details["int4_coverage"]["dtype"] == "int4"
    originals, found = weights(source), dequantized(model)
    assert set(found) == {"k64", "k48", "gemm_transposed", "k20"}
    values = inits(model)
    for name, (dq, approximate) in found.items():
        stored, scale = values[dq.input[0]], numpy_helper.to_array(values[dq.input[1]])
        axis, block = attrs(dq)["axis"], attrs(dq)["block_size"]
        assert stored.data_type == INT4 and len(dq.input) == 2  # no zero point: symmetric
        assert scale.dtype == np.float32 and (axis, block) == (
            {"gemm_transposed": (1, 32), "k48": (0, 24)}.get(name, (0, 32))
        )
        original = originals[name]
        blocks = -(-original.shape[axis] // block)
        assert scale.shape == tuple(
            blocks if i == axis else d for i, d in enumerate(original.shape)
        )
        q = numpy_helper.to_array(stored).astype(np.int8)
        assert q.min() >= -7 and q.max() <= 7 and np.abs(q).max() == 7  # amax maps to 7
        step = np.repeat(scale, block, axis=axis).take(range(original.shape[axis]), axis=axis)
        assert np.all(np.abs(approximate - original) <= step / 2 * (1 + 1e-6))
    x = {"x": np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)}
    expected = ort_run(source, [x])[0][0]
    got = ort_run(model, [x])[0][0]
    assert got.shape == expected.shape and np.isfinite(got).all()
    # ONNX Runtime computes what the stored blocks say: the first product, by hand.
    first = onnx.utils.Extractor(model).extract_model(["x"], ["a"])
    np.testing.assert_allclose(ort_run(first, [x])[0][0], x["x"] @ found["k64"][1], rtol=1e-5)


def test_awq_scales_the_activation_and_never_errs_more_than_rtn_on_its_data(tmp_path):
    source = cases()
    model, ctx = quantize(source, tmp_path, case_data(source), awq={"scale": True})
    found = ctx.details["int4"]["awq"]["activations"]
    assert set(found) == {"x", "a", "b", "c"} and ctx.details["int4"]["awq"]["feeds"] > 0
    for group in found.values():
        assert group["error"] <= group["rtn_error"]
    assert any(g["error"] < 0.9 * g["rtn_error"] for g in found.values())
    scaled = [g["nodes"] for g in found.values() if g["alpha"] is not None]
    muls = [n for n in model.graph.node if n.op_type == "Mul"]
    assert len(muls) == len(scaled) > 0  # one Mul per scaled activation, ahead of its products
    consumers = {n.input[0]: n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")}
    assert sorted(consumers[m.output[0]] for m in muls) == sorted(n for g in scaled for n in g)
    assert np.isfinite(ort_run(model, [case_data(source).first()])[0][0]).all()


def test_the_automatic_search_keeps_int4_layers_in_float_until_the_gate_passes(tmp_path):
    source = cases()
    rng = np.random.default_rng(5)
    validation = [{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(4)]
    ctx = PassContext(scratch_dir=tmp_path, calibration=case_data(source), validation=validation)
    options = {"dtype": "int4", "block_size": 32, "auto": {"metric": "cosine", "min": 0.9999}}
    graph = Quantize(Quantize.Options.model_validate(options)).run(gs.import_onnx(source), ctx)
    model = gs.export_onnx(graph.graph)
    onnx.checker.check_model(model, full_check=True)
    kept = {k["node"] for k in ctx.details["excluded_nodes"]}
    assert ctx.details["auto"]["value"] >= 0.9999 and kept
    assert ctx.details["quantized_nodes"] + len(kept) == 4
    assert not kept & set(dequantized(model))


def test_int4_fp16_weights_get_fp16_scales(tmp_path):
    """Scales (and the DequantizeLinear's output) take the weight's float type."""
    half = onnx.version_converter.convert_version(cases(), 21)
    for init in half.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            values = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(values, init.name))
    for value in (*half.graph.input, *half.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    model, _ = quantize(half, tmp_path, method="rtn")
    found = dequantized(model)
    assert len(found) == 4
    assert all(
        inits(model)[dq.input[1]].data_type == TensorProto.FLOAT16 for dq, _ in found.values()
    )
    assert ort_run(model, [{"x": np.ones((4, 64), np.float16)}])[0][0].dtype == np.float16


BAD_OPTIONS = [
    ({"dtype": "int4", "block_size": 48}, "block_size: Input should be 32, 64 or 128"),
    ({"dtype": "int4", "pooling": False}, "pooling: Value error, means nothing for dtype int4"),
    ({"dtype": "int4", "calibrator": "minmax"}, "calibrator: Value error, means nothing"),
    ({"dtype": "int8", "method": "rtn"}, "method: Value error, applies to dtype int4 only"),
    ({"dtype": "fp8", "block_size": 64}, "block_size: Value error, applies to dtype int4 only"),
    ({"dtype": "int4", "op_types": ["Conv"]}, "op_types: Value error, cannot quantize ['Conv']"),
    ({"dtype": "int4", "awq": {"clip_min": 1.5}}, "awq.clip_min: Input should be less than 1"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_a_bad_int4_option_names_its_line(write_recipe, options, message):
    lines = ["name: m", "model: m.onnx", "passes:", "  - quantize:"]
    lines += [f"      {key}: {value}" for key, value in options.items()]
    path = write_recipe("\n".join(lines) + "\n")
    with pytest.raises(RecipeError) as info:
        trtopt.load_recipe(path)
    text = str(info.value)
    assert text.startswith(f"{path}:") and message in text, text
    line = int(text.split(":")[1])
    assert lines[line - 1].strip().startswith(message.split(":")[0].split(".")[0])


# -- PaddleOCR's pretrained PP-OCRv4 recognizer (its transformer's MatMuls) -------------------

WORDS = ["invoice", "total", "amount", "date", "receipt", "price", "tax", "No.", "17", "3.50"]


def text_lines(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Rendered text lines as the recognizer takes them: dark words on light paper, 48x320,
    scaled to [-1, 1] (Pillow's own font)."""
    image_module = pytest.importorskip("PIL.Image")
    from PIL import ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        paper, ink = int(rng.integers(170, 256)), int(rng.integers(0, 90))
        image = image_module.new("L", (640, 96), paper)
        font = ImageFont.load_default(size=int(rng.integers(48, 70)))
        words = " ".join(rng.choice(WORDS, int(rng.integers(2, 5))))
        ImageDraw.Draw(image).text((int(rng.integers(0, 20)), 10), words, fill=ink, font=font)
        pixels = np.asarray(image.resize((320, 48)), np.float32) + rng.normal(0, 4, (48, 320))
        rgb = np.repeat(np.clip(pixels, 0, 255)[None, None], 3, axis=1)
        found.append({"x": ((rgb / 255 - 0.5) / 0.5).astype(np.float32)})
    return found


@pytest.fixture(scope="module")
def recognizer(public_models, tmp_path_factory):  # noqa: F811
    """The recognizer (one batch dim by name, 48x320 lines), its calibration data (16 lines)
    and its held-out lines (24, another seed), and the model quantized by each method."""
    model = onnx.load(str(public_models / PADDLE_REC))
    batch, _, height, width = model.graph.input[0].type.tensor_type.shape.dim
    batch.dim_param, height.dim_value, width.dim_value = "batch", 48, 320
    folder = tmp_path_factory.mktemp("rec")
    for index, feed in enumerate(text_lines(16, seed=1)):
        np.savez(folder / f"{index:02d}.npz", **feed)
    data = DataSet(DataSource(npz=str(folder / "*.npz")), feeds.model_inputs(model))
    quantized = {method: quantize(model, folder, data, method=method) for method in ("rtn", "awq")}
    return model, text_lines(24, seed=2), quantized


def relative_error(expected: list, model: onnx.ModelProto, held_out) -> float:
    """Mean over held-out lines of |output - reference| / |reference| (L2)."""
    pairs = zip(expected, ort_run(model, held_out))
    return float(np.mean([np.linalg.norm(g[0] - r[0]) / np.linalg.norm(r[0]) for r, g in pairs]))


@pytest.mark.slow
def test_awq_beats_rtn_on_held_out_text_with_the_pretrained_recognizer(recognizer):
    source, held_out, quantized = recognizer
    awq_ctx = quantized["awq"][1]
    assert awq_ctx.details["opset"] == {"from": 12, "to": 21, "by": "onnx.version_converter"}
    # Every transformer weight (2 blocks: QKV, projection, MLP) and the CTC head; attention's
    # activation x activation products stay float.
    assert awq_ctx.details["quantized_nodes"] == 9 and len(awq_ctx.details["skipped"]) == 4
    assert awq_ctx.details["int4"]["block_sizes"] == {"p2o.MatMul.10": 120, "p2o.MatMul.22": 120}
    groups = awq_ctx.details["int4"]["awq"]["activations"].values()
    assert all(g["error"] < g["rtn_error"] for g in groups)
    expected = ort_run(source, held_out)
    errors = {name: relative_error(expected, m, held_out) for name, (m, _) in quantized.items()}
    assert errors["awq"] < 0.8 * errors["rtn"], errors


@pytest.mark.slow
def test_tensorrt_rtx_builds_int4_from_sm80_and_refuses_sm75(recognizer, tmp_path):
    trt_rtx.trt()  # skips first where TensorRT for RTX is missing
    source, _, quantized = recognizer
    model = quantized["awq"][0]
    engine = trt_rtx.build_for(model, ["SM80", "SM89", "SM120"], REC_DIMS)
    assert engine is not None
    assert trt_rtx.build_for(model, ["SM75"], REC_DIMS) is None  # "HW-specific datatypes: int4"
    # FP16 around the INT4 weights (the precision pass lowers the rest): smaller still.
    half, ctx = quantize(source, tmp_path, method="rtn", high_precision="fp16")
    assert ctx.details["high_precision"] and len(dequantized(half)) == 9
    assert all(
        inits(half)[dq.input[1]].data_type == TensorProto.FLOAT16
        for dq, _ in dequantized(half).values()
    )
    smaller = trt_rtx.build_for(half, ["SM80", "SM89", "SM120"], REC_DIMS)
    assert smaller is not None and smaller.nbytes < engine.nbytes


def test_lint_int4_needs_compute_capability_8_0(tmp_path):
    model, _ = quantize(cases(), tmp_path, method="rtn")

    def found(**kwargs):
        report = lint_model(model, "tensorrt-rtx", parse=False, **kwargs)
        return [f for f in report.findings if f.rule == "int4-compute-capability"]

    (older,) = found(compute_capabilities=["7.5", "8.6", "12.0"])
    assert older.level == "error" and "7.5, below 8.0" in older.message
    assert older.op == "DequantizeLinear" and older.node
    assert found(compute_capabilities=["8.0", "8.9"]) == []
    (unknown,) = found()
    assert unknown.level == "warning" and "8.0 or later" in unknown.message
