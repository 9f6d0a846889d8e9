"""Judging an FP16 graph on ONNX Runtime's CPU shows the rounding TensorRT's FP16 kernels will
have. ONNX Runtime has no FP16 CPU kernel for Add (nor for Conv, Mul, Sigmoid...): it computes
such an op in FP32 and drops the graph's Casts around it, so an FP16 graph judged plainly shows
no error at all where TensorRT rounds the inputs to FP16. Here x near 1000, where FP16 holds
only halves: x - 1000 in FP16 is off by up to 0.25."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from helpers import ort_run
from trtopt import accuracy, emulation, metrics
from trtopt.backends import BuildResult, get_backend
from trtopt.passes import PassContext
from trtopt.passes.precision import Precision
from trtopt.passes.sensitivity import AutoOptions, Judge
from trtopt.session import artifact_runner

FEEDS = [{"x": (1000.0 + np.arange(64, dtype=np.float32) / 64)[None]}]
"""Values near 1000 with fractions FP16 cannot hold (its step there is 0.5)."""


def offset() -> onnx.ModelProto:
    """y = x - 1000 (an Add of -1000) in FP32."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "minus"], ["y"], name="offset")],
        "offset",
        [helper.make_tensor_value_info("x", T.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", T.FLOAT, [1, 64])],
        [numpy_helper.from_array(np.array([-1000.0], np.float32), "minus")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def lowered(model: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    """The FP16 pass's graph: Cast to FP16, the Add in FP16, Cast back to FP32."""
    result = Precision(Precision.Options()).run(gs.import_onnx(model), PassContext(tmp_path))
    return gs.export_onnx(result.graph)


def max_abs(reference: list, candidate: list) -> float:
    ref = [{"y": r[0]} for r in reference]
    return metrics.measure(ref, [{"y": c[0]} for c in candidate])["y"]["max_abs"]


def test_plain_onnx_runtime_hides_the_rounding_the_emulation_shows(tmp_path):
    model = offset()
    fp16 = lowered(model, tmp_path)
    assert [n.op_type for n in fp16.graph.node] == ["Cast", "Add", "Cast"]
    expected = ort_run(model, FEEDS)
    assert max_abs(expected, ort_run(fp16, FEEDS)) < 1e-3  # what ONNX Runtime computes
    got = emulation.session(fp16).run(None, FEEDS[0])
    rounded = FEEDS[0]["x"].astype(np.float16).astype(np.float32) - 1000.0
    np.testing.assert_array_equal(got[0], rounded)  # what TensorRT's FP16 Add computes
    assert max_abs(expected, [got]) == pytest.approx(0.25)


def test_the_check_of_a_tensorrt_build_sees_the_fp16_rounding(tmp_path):
    """The compile's check (and golden check) of an engine that cannot run here runs the graph
    it was built from: with its FP16 rounding, max_abs 0.25, not 0."""
    model = offset()
    path = tmp_path / "model.onnx"
    onnx.save(lowered(model, tmp_path), str(path))
    backend = get_backend("tensorrt", {})
    build = BuildResult("tensorrt", tmp_path / "model.engine", 0.0)
    runner, reason = artifact_runner(backend, build, path, unavailable="no GPU here")
    assert reason == "no GPU here"
    got = [[result["y"]] for result in accuracy.run(runner, FEEDS)]
    assert max_abs(ort_run(model, FEEDS), got) == pytest.approx(0.25)


def test_the_search_keeps_the_layer_whose_fp16_rounding_breaks_the_metric(tmp_path):
    """precision.auto with max_abs <= 0.05: every layer lowered misses it (0.25), so the Add
    stays FP32; judged as ONNX Runtime computes FP16, nothing would be kept."""
    model = offset()
    judge = Judge(model, FEEDS, AutoOptions(metric="max_abs", max=0.05))
    assert judge(lowered(model, tmp_path))[0] == pytest.approx(0.25)
    options = Precision.Options.model_validate({"auto": {"metric": "max_abs", "max": 0.05}})
    ctx = PassContext(tmp_path, validation=FEEDS)
    Precision(options).run(gs.import_onnx(model), ctx)
    assert [k["node"] for k in ctx.details["auto"]["kept"]] == ["offset"]
