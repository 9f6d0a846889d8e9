"""quantize's placement: ``onnxruntime`` places Q/DQ where ONNX Runtime's CPU graph
transformers form integer kernels (counted in the model ONNX Runtime optimizes), keeps the
pretrained classifier's accuracy, and works with exclusions and the automatic search;
``tensorrt`` stays the default and its graph is unchanged."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from helpers import ort_run
from test_public_models import public_models  # noqa: F401  (the fixture: pretrained models)
from test_quantize import CNN, cosine
from test_quantize import quantize as quantize_in
from test_quantize_fp8 import PADDLE_CLS, text_lines
from trtopt import feeds
from trtopt.calibration import DataSet, DataSource
from trtopt.passes import PassContext
from trtopt.passes.fusion.conv_bn import FuseConvBn
from trtopt.passes.quantize import Quantize


def quantize(path, folder, **options) -> tuple[onnx.ModelProto, PassContext]:
    folder.mkdir()
    return quantize_in(path, folder, **options)


def fused_ops(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    """The op types of ``model`` as ONNX Runtime's CPU provider optimizes it (its QDQ
    fusions run at the extended level)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return collections.Counter(
        n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node
    )


def test_onnxruntime_placement_forms_integer_kernels_where_tensorrts_forms_none(tmp_path):
    """The CNN's 6 Convs, 2 residual Adds and Gemm run as QLinearConv, QLinearAdd and QGemm
    (every Relu folded into a Q); with TensorRT's placement ONNX Runtime forms none of them."""
    model, ctx = quantize(CNN, tmp_path / "ort", calibrator="minmax", placement="onnxruntime")
    ops = fused_ops(model, tmp_path / "ort")
    assert ops["QLinearConv"] == 6 and ops["QLinearAdd"] == 2 and ops["QGemm"] == 1, ops
    assert not {"Conv", "Add", "Relu", "Gemm"} & set(ops), ops
    assert ops["QLinearGlobalAveragePool"] == 1 and ctx.details["quantized_nodes"] == 10
    trt, _ = quantize(CNN, tmp_path / "trt", calibrator="minmax")
    ops = fused_ops(trt, tmp_path / "trt")
    assert ops["Conv"] + ops["FusedConv"] == 6, ops
    assert not any(op.startswith(("QLinear", "QGemm")) for op in ops), ops


def test_tensorrt_placement_is_the_default_and_unchanged(tmp_path):
    """Named or not, tensorrt gives the same bytes: INT8 Q/DQ with zero points 0 (TensorRT's
    symmetric INT8), no UINT8 and no INT32 bias (ONNX Runtime's forms)."""
    default, _ = quantize(CNN, tmp_path / "a", calibrator="minmax")
    named, _ = quantize(CNN, tmp_path / "b", calibrator="minmax", placement="tensorrt")
    assert default.SerializeToString() == named.SerializeToString()
    zero_points = [
        onnx.numpy_helper.to_array(i)
        for i in default.graph.initializer
        if i.name.endswith("_zero_point")
    ]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_pretrained_classifier_keeps_its_accuracy_in_integer_kernels(tmp_path, public_models):  # noqa: F811
    """PaddleOCR's text direction classifier (pretrained; BatchNorm folded first, as a recipe's
    fuse pass does): every Conv a QLinearConv on ONNX Runtime, every held-out line classified
    as FP32 does and a worst cosine of 0.8 (measured on 32 lines: worst 0.830, mean 0.989,
    agreement 1.0; ONNX Runtime's own quantize_static, per tensor: 0.489, 0.976, 0.906)."""
    model = onnx.load(str(public_models / PADDLE_CLS))
    batch, _, height, width = model.graph.input[0].type.tensor_type.shape.dim
    batch.dim_param, height.dim_value, width.dim_value = "batch", 48, 192
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for index, feed in enumerate(text_lines(8, seed=1)):
        np.savez(calibration / f"{index:02d}.npz", **feed)
    held_out = text_lines(8, seed=2)
    reference = ort_run(model, held_out)
    graph = FuseConvBn().run(gs.import_onnx(model), PassContext(scratch_dir=tmp_path))
    data = DataSet(DataSource(npz=str(calibration / "*.npz")), feeds.model_inputs(model))
    ctx = PassContext(scratch_dir=tmp_path, calibration=data)
    options = {"calibrator": "minmax", "placement": "onnxruntime"}
    quantized = gs.export_onnx(
        Quantize(Quantize.Options.model_validate(options)).run(graph, ctx).graph
    )
    ops = fused_ops(quantized, tmp_path)
    convs = sum(n.op_type == "Conv" for n in model.graph.node)
    assert ops["QLinearConv"] == convs and "Conv" not in ops, ops
    outputs = [(r[0], g[0]) for r, g in zip(reference, ort_run(quantized, held_out))]
    assert all((r.argmax(-1) == g.argmax(-1)).all() for r, g in outputs)
    assert min(cosine(r, g) for r, g in outputs) >= 0.8


def test_exclusions_and_the_automatic_search_with_onnxruntime_placement(tmp_path):
    """An excluded Conv stays float on ONNX Runtime while the others still fuse, and the
    search reaches its target with the graph it ships running QLinear kernels."""
    options = {"calibrator": "minmax", "placement": "onnxruntime"}
    excluded = "/net/resnet/encoder/stages.0/layers.0/layer/layer.0/convolution/Conv"
    model, _ = quantize(CNN, tmp_path / "x", exclude={"nodes": [f"^{excluded}$"]}, **options)
    ops = fused_ops(model, tmp_path / "x")
    # It and the Conv reading its output run in float: ONNX Runtime would quantize its weight
    # itself between a DQ and a Q.
    assert ops["Conv"] + ops["FusedConv"] == 2 and ops["QLinearConv"] == 4, ops
    model, ctx = quantize(CNN, tmp_path / "a", auto={"metric": "cosine", "min": 0.99}, **options)
    auto = ctx.details["auto"]
    assert auto["reached"] and auto["value"] >= 0.99 and auto["kept"], auto
    assert fused_ops(model, tmp_path / "a")["QLinearConv"] >= 1


def test_onnxruntime_placement_is_int8_only():
    with pytest.raises(ValueError, match="int8 only"):
        Quantize.Options.model_validate({"dtype": "fp8", "placement": "onnxruntime"})
