"""Local error: each layer run alone in FP16 on its own captured FP32 inputs, its output's SQNR
against FP32. A layer FP16 cannot compute is far below FP16's own rounding, a benign one near
it; the plain FP16 pass keeps the first with no search, and the automatic search judges it
first. On a small graph built for it and on PaddleOCR's pretrained text detector."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from helpers import DIMS, ort_run
from test_public_models import public_models  # noqa: F401  (the fixture: pretrained models)
from text_pages import flipped, text_page
from trtopt import feeds
from trtopt.calibration import DataSet, DataSource
from trtopt.passes import PassContext, local_error
from trtopt.passes.graph_tools import with_types
from trtopt.passes.local_error import local_snr
from trtopt.passes.precision import Precision

DETECTOR = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
NORM = "p2o.BatchNormalization.1"
"""The detector's standalone BatchNormalization: a variance of 9.79e7, inf in FP16."""


def cancelling() -> onnx.ModelProto:
    """x near 1000: ``cancel`` = x - 1000 (FP16 holds 1000 only to 0.5: the difference is
    lost, with every value in range), ``overflow`` = x * 100 (past FP16's 65504) and
    ``benign`` = (x - 1000) * 2 computed from FP32 inputs."""
    scalar = [1]
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["x", "thousand"], ["d"], name="cancel"),
            helper.make_node("Mul", ["x", "hundred"], ["m"], name="overflow"),
            helper.make_node("Mul", ["d", "two"], ["y"], name="benign"),
        ],
        "cancelling",
        [helper.make_tensor_value_info("x", T.FLOAT, ["batch", 64])],
        [
            helper.make_tensor_value_info("y", T.FLOAT, ["batch", 64]),
            helper.make_tensor_value_info("m", T.FLOAT, ["batch", 64]),
        ],
        [
            numpy_helper.from_array(np.full(scalar, value, np.float32), name)
            for name, value in (("thousand", 1000.0), ("hundred", 100.0), ("two", 2.0))
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def synthetic(model: onnx.ModelProto, low: float, high: float) -> DataSet:
    infos = feeds.model_inputs(model)
    source = DataSource.model_validate({"synthetic": {"seed": 3}, "limit": 4})
    return DataSet(source, infos, DIMS, {i.name: (low, high) for i in infos})


def test_local_snr_is_low_where_fp16_cannot_compute_a_layer_and_high_where_it_can():
    model = cancelling()
    graph = with_types(gs.import_onnx(model))
    lower = Precision(Precision.Options(io="convert")).lower
    found = local_snr(graph, graph.nodes, lower, synthetic(model, 999.9, 1000.1))
    assert found["overflow"] == -math.inf
    assert found["cancel"] < 10  # the difference rounds away
    assert found["benign"] > 60  # FP16's own rounding


def test_the_plain_fp16_pass_keeps_what_only_the_local_error_shows(tmp_path):
    """No range guard sees ``cancel`` (its values fit FP16); its local error keeps it FP32 and
    the output stays exact. Without the local measure it is lowered (its input cast to FP16).
    (ONNX Runtime's CPU would not show the loss in the whole graph: it drops the Cast in front
    of an op it has no FP16 kernel for. TensorRT runs what the graph says.)"""
    model = cancelling()
    data = synthetic(model, 999.9, 1000.1)
    feed = [data.first()]
    (expected, _), *_ = ort_run(model, feed)
    for limit in (40.0, None):
        ctx = PassContext(scratch_dir=tmp_path, calibration=data)
        options = Precision.Options(guard={"min_local_snr_db": limit})
        lowered = gs.export_onnx(Precision(options).run(gs.import_onnx(model), ctx).graph)
        reasons = {k["node"]: k["reason"] for k in ctx.details["kept_fp32"]}
        assert "reaches 1e+05" in reasons["overflow"]  # the activation guard's
        cancel = next(n for n in lowered.graph.node if n.name == "cancel")
        if limit is not None:
            assert "local error" in reasons["cancel"] and "benign" not in reasons
            assert cancel.input[0] == "x"
            assert np.abs(ort_run(lowered, feed)[0][0] - expected).max() < 1e-3
        else:
            assert "cancel" not in reasons and cancel.input[0] == "x_fp16"


def test_local_snr_within_a_small_memory_budget_measures_the_same_in_more_runs(monkeypatch):
    """A chain of layers whose activations (1.2 MB each) pass the budget: the layers are
    measured in several runs over the data, each holding a few of them, with the same result."""
    size, count = 300_000, 6
    nodes = [
        helper.make_node("Mul", [f"t{i}", "scale"], [f"t{i + 1}"], name=f"mul{i}")
        for i in range(count)
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("t0", T.FLOAT, [1, size])],
        [helper.make_tensor_value_info(f"t{count}", T.FLOAT, [1, size])],
        [numpy_helper.from_array(np.array([1.7], np.float32), "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    typed = with_types(gs.import_onnx(model))
    lower = Precision(Precision.Options(io="convert")).lower
    runs = []
    counted = local_error.collect

    def counting(*args, **kwargs):
        runs.append(args[2])  # the tensors of one run
        return counted(*args, **kwargs)

    monkeypatch.setattr(local_error, "collect", counting)
    data = synthetic(model, -1.0, 1.0)
    whole = local_snr(typed, typed.nodes, lower, data, samples=2)
    assert len(runs) == 1
    bounded = local_snr(typed, typed.nodes, lower, data, samples=2, memory_budget=3 * 4 * size)
    assert len(runs) > 3 and max(len(tensors) for tensors in runs[1:]) <= 4
    assert bounded == whole and min(whole.values()) > 60


# -- PaddleOCR's PP-OCRv4 detector, pretrained ----------------------------------------------


def detector(public_models, size: int) -> onnx.ModelProto:  # noqa: F811
    model = onnx.load(str(public_models / DETECTOR))
    _, _, height, width = model.graph.input[0].type.tensor_type.shape.dim
    height.dim_value, width.dim_value = size, size
    return model


def pages(model: onnx.ModelProto, folder, size: int, seeds: range) -> DataSet:
    folder.mkdir()
    for seed in seeds:
        np.savez(folder / f"{seed}.npz", **text_page(size, seed))
    return DataSet(DataSource(npz=str(folder / "*.npz")), feeds.model_inputs(model))


def test_plain_fp16_keeps_the_detectors_batchnorm_alone_and_its_text_map(
    tmp_path,
    public_models,  # noqa: F811
):
    """The plain FP16 pass with calibration data: the BatchNormalization whose variance FP16
    cannot hold stays FP32 and nothing else does (every other layer's local error is FP16's
    rounding); on held-out pages, at most 0.5% of the probability map's pixels flip at 0.3."""
    model = detector(public_models, 256)
    ctx = PassContext(scratch_dir=tmp_path, calibration=pages(model, tmp_path / "c", 256, range(2)))
    options = Precision.Options(guard={"local_samples": 2})
    lowered = gs.export_onnx(Precision(options).run(gs.import_onnx(model), ctx).graph)
    assert [k["node"] for k in ctx.details["kept_fp32"]] == [NORM]
    assert min(w["snr_db"] for w in ctx.details["local_error"]["worst"]) > 40
    held = [text_page(256, seed) for seed in (100, 101)]
    expected, got = ort_run(model, held), ort_run(lowered, held)
    assert flipped([e[0] for e in expected], [g[0] for g in got]) <= 0.005


def test_the_search_judges_the_detectors_culprit_first(tmp_path, public_models):  # noqa: F811
    """With the range guard off, the search alone finds the BatchNormalization: ranked worst
    by its local error, it is the first set kept (every layer lowered, then all but it, then
    its effect alone: 3 judgements, where group testing in graph order took 21)."""
    model = detector(public_models, 160)
    judged = [text_page(160, seed) for seed in range(2)]
    ctx = PassContext(
        scratch_dir=tmp_path,
        validation=judged,
        calibration=pages(model, tmp_path / "c", 160, range(10, 12)),
    )
    options = Precision.Options.model_validate(
        {
            "guard": {"enabled": False, "local_samples": 2},
            "auto": {"metric": "cosine", "min": 0.999, "samples": 2},
        }
    )
    Precision(options).run(gs.import_onnx(model), ctx)
    auto = ctx.details["auto"]
    assert [k["node"] for k in auto["kept"]] == [NORM] and auto["reached"]
    assert auto["evaluations"] == 3 and auto["kept"][0]["local_snr_db"] < 0
    worst, runner_up = ctx.details["local_error"]["worst"][:2]
    assert worst["node"] == NORM and runner_up["snr_db"] > 40


def test_a_node_that_cannot_be_lowered_alone_is_unmeasured():
    """Where the lowered node cannot be built (or run) alone, its local error is unknown: NaN,
    which neither the guard nor the search's ranking takes for a culprit."""
    model = cancelling()
    graph = with_types(gs.import_onnx(model))
    lower = Precision(Precision.Options(io="convert")).lower

    def refusing(single: gs.Graph, names: set[str]) -> gs.Graph:
        if "benign" in names:
            raise ValueError("not this one")
        return lower(single, names)

    found = local_snr(graph, graph.nodes, refusing, synthetic(model, 999.9, 1000.1))
    assert math.isnan(found["benign"]) and found["overflow"] == -math.inf
