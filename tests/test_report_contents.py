"""What a user reads after a compile: the console summary and report.md show the warnings,
the golden check's table, the layers kept in float and the quantized coverage, labelled with
its own type (report.json and report.html too); metrics show to their limit's precision."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

import trtopt
from helpers import MODELS
from trtopt import report_text
from trtopt.formatting import format_limit, format_metric
from trtopt.passes.quantize import layer_macs, with_types

FAST = ["check.samples=2", "check.latency_runs=0", "check.verify_passes=false"]


def test_summary_and_report_md_show_warnings_golden_kept_layers_and_quantized_coverage(
    write_recipe, recipe_for, tmp_path
):
    recipe = recipe_for(
        MODELS / "cnn_legacy.onnx",
        passes=[
            "cleanup",
            {"quantize": {"exclude": {"op_types": ["Gemm"]}}},
            {"precision": {"dtype": "fp16", "keep_fp32": {"op_types": ["GlobalAveragePool"]}}},
        ],
    )
    recipe["check"]["golden"] = "golden.npz"
    recipe["check"]["thresholds"] = {"min_cosine": 0.9, "max_abs": 10.0}
    path = write_recipe(recipe)
    trtopt.update_golden(path)
    result = trtopt.compile(path, tmp_path / "o", overrides=FAST)
    report = result.report
    summary = result.summary()
    markdown = (tmp_path / "o" / "report.md").read_text()
    page = (tmp_path / "o" / "report.html").read_text()

    synthetic = next(w for w in report["warnings"] if "calibrated on synthetic data" in w)
    assert f"WARN {synthetic}" in summary
    assert "## Warnings" in markdown and f"- {synthetic}" in markdown

    assert "## Golden check (`" in markdown
    assert markdown.count("| logits | cosine |") == 2  # the check's table and the golden's

    kept = [k["node"] for k in report["kept_in_higher_precision"]]
    assert kept and "## Kept in higher precision" in markdown
    assert all(f"| {node} |" in markdown for node in kept)
    assert f"kept in higher precision: {kept[0]}" in summary

    coverage = report["quantized_coverage"]
    assert coverage["pass"] == "quantize"
    assert coverage["layers"] == {"quantized": 6, "quantizable": 7}  # the Gemm excluded
    macs = coverage["macs"]
    assert 0 < macs["quantized"] < macs["quantizable"] and macs["unknown_layers"] == 0
    record = next(p for p in report["passes"] if p["name"] == "quantize")
    assert record["details"]["int8_coverage"]["layers"]["quantizable"] == 7
    line = "6 of 7 quantizable layers in INT8"
    assert f"  int8     {line}" in summary
    assert "## INT8 coverage" in markdown and line in markdown
    assert "INT8 coverage" in page and line in page
    # Every quantized type is labelled as itself (INT4 weight-only, FP8), never as INT8.
    for dtype in ("int4", "fp8"):
        relabelled = {**report, "quantized_coverage": {**coverage, "dtype": dtype}}
        shown = report_text.summary(relabelled)
        assert f"  {dtype:<8} 6 of 7 quantizable layers in {dtype.upper()}" in shown
        assert "int8" not in shown.lower().replace("cnn_legacy", "")
        assert f"## {dtype.upper()} coverage" in report_text.markdown(relabelled)


def small_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    matrix = numpy_helper.from_array(np.ones((4 * 6 * 6, 7), np.float32), "m")
    gemm_b = numpy_helper.from_array(np.ones((7, 5), np.float32), "g")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv"),
        helper.make_node("Flatten", ["c"], ["f"], "flatten"),
        helper.make_node("MatMul", ["f", "m"], ["mm"], "matmul"),
        helper.make_node("Transpose", ["mm"], ["t"], "transpose"),
        helper.make_node("Gemm", ["t", "g"], ["y"], "gemm", transA=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight, matrix, gemm_b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_macs_of_conv_matmul_and_gemm_from_shapes():
    graph = with_types(gs.import_onnx(small_model()))
    # Conv: out [1, 4, 6, 6] x 3*3*3; MatMul [1, 144] x [144, 7]; Gemm A^T [1, 7] x [7, 5]
    # (the dynamic batch counts as 1)
    assert layer_macs(graph) == {"conv": 4 * 36 * 27, "matmul": 144 * 7, "gemm": 7 * 5}


def test_metrics_show_to_the_limit_precision():
    assert format_limit(0.99999) == "0.99999"
    assert format_metric(0.9999987, 0.99999) == "0.999999"
    assert format_metric(0.9999912, 0.99999) != format_metric(0.9999987, 0.99999)
    assert format_metric(0.001234, 0.05) == "0.001234"  # four significant digits suffice
    assert format_metric(0.5) == "0.5"


def test_coverage_names_the_type_it_counts():
    from trtopt.formatting import coverage_type, describe_coverage

    counted = {"layers": {"quantized": 2, "quantizable": 3}, "macs": {"quantizable": 0}}
    assert coverage_type(counted) == "INT8"
    fp8 = {"dtype": "fp8", **counted}
    assert coverage_type(fp8) == "FP8" and "2 of 3 quantizable layers in FP8" in describe_coverage(
        fp8
    )


def test_latency_says_where_it_was_measured():
    from trtopt.formatting import latency_where

    def report(backend, providers=None, not_run=None):
        build = {"backend": backend, **({"providers": providers} if providers else {})}
        return {"build": build, "accuracy": {"artifact_not_run": not_run}}

    assert latency_where(report("onnxruntime")) == "ONNX Runtime CPU"
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert latency_where(report("onnxruntime", cuda)) == "ONNX Runtime CUDA, CPU"
    assert latency_where(report("tensorrt-rtx")) == "tensorrt-rtx"
    assert latency_where(report("tensorrt-rtx", not_run="no GPU")) == "ONNX Runtime CPU"
