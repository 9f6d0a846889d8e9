"""Calibration does not depend on how samples are grouped into feeds, and a feed of any size
runs one sample at a time: the same ranges, by every calibrator, for one batch-N feed, N
one-sample feeds or any grouping between; ONNX Runtime is never fed more than a sample, so
memory follows ``memory_budget`` whatever the feed's size. Feeds the model's inputs do not
let be cut run whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from helpers import MODELS
from test_public_models import public_models  # noqa: F401  (the fixture: pretrained models)
from trtopt import feeds
from trtopt.calibration import CALIBRATORS, AbsHistogram, DataSet, DataSource, calibrate
from trtopt.calibration.collect import collect, groups
from trtopt.calibration.sources import cut, samples_in

PADDLE_CLS = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
SAMPLES = 6
GROUPINGS = {"one feed": [SAMPLES], "one per sample": [1] * SAMPLES, "uneven": [2, 3, 1]}


def _samples(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """SAMPLES samples for ``model``'s inputs, stacked: smooth images, or token ids with
    padded tails."""
    rng = np.random.default_rng(seed)
    stacked = {}
    for info in feeds.model_inputs(model):
        if info.name == "x":  # the PaddleOCR classifier: 48x192 text lines
            low = rng.standard_normal((SAMPLES, 3, 6, 24)).astype(np.float32)
            stacked["x"] = low.repeat(8, axis=2).repeat(8, axis=3)
        elif info.name == "pixel_values":
            stacked[info.name] = rng.random((SAMPLES, 3, 32, 32), dtype=np.float32)
        elif info.name == "input_ids":
            stacked[info.name] = rng.integers(0, 100, (SAMPLES, 8), dtype=np.int64)
        else:  # attention_mask
            mask = np.ones((SAMPLES, 8), dtype=np.int64)
            for row, length in enumerate(rng.integers(3, 9, SAMPLES)):
                mask[row, length:] = 0
            stacked[info.name] = mask
    return stacked


def _write(folder: Path, stacked: dict[str, np.ndarray], sizes: list[int]) -> str:
    """The samples as .npz feeds of ``sizes`` rows each, in order; their glob."""
    folder.mkdir()
    start = 0
    for index, rows in enumerate(sizes):
        feed = {k: v[start : start + rows] if v.ndim else v for k, v in stacked.items()}
        np.savez(folder / f"{index:02d}.npz", **feed)
        start += rows
    return str(folder / "*.npz")


def _histograms(model: onnx.ModelProto, data: DataSet, names: list[str]) -> dict:
    found = {name: AbsHistogram() for name in names}
    collect(model, data, names, lambda name, array: found[name].update(array))
    return found


@pytest.fixture(params=["cnn", "bert", "ppocr-cls"])
def real_model(request) -> onnx.ModelProto:
    """A model with exported (cnn, bert: tests/models) or pretrained weights (PaddleOCR's text
    direction classifier, from its wheel)."""
    if request.param == "ppocr-cls":
        return onnx.load(str(request.getfixturevalue("public_models") / PADDLE_CLS))
    return onnx.load(str(MODELS / f"{request.param}_legacy.onnx"))


def test_ranges_do_not_depend_on_how_samples_are_grouped_into_feeds(tmp_path, real_model):
    """The histograms of every node's outputs (and so every calibrator's range, and the
    largest |x|) are identical, bin for bin, for one batch-6 feed, six one-sample feeds and
    feeds of 2, 3 and 1 samples. (When whole feeds were observed, the histogram's range was
    set by the first feed: 16 text lines through the PaddleOCR classifier as one feed or
    sixteen gave entropy ranges 0.57-1.54x apart.)"""
    inputs = feeds.model_inputs(real_model)
    names = [o for node in real_model.graph.node for o in node.output if o]
    stacked = _samples(real_model)
    found = {}
    for label, sizes in GROUPINGS.items():
        pattern = _write(tmp_path / label.replace(" ", "-"), stacked, sizes)
        found[label] = _histograms(real_model, DataSet(DataSource(npz=pattern), inputs), names)
    reference = found["one feed"]
    for label, histograms in found.items():
        for name in names:
            got, want = histograms[name], reference[name]
            assert (got.top, got.amax, got.total) == (want.top, want.amax, want.total), name
            np.testing.assert_array_equal(got.counts, want.counts, err_msg=f"{label}: {name}")


def test_calibrate_gives_every_calibrator_the_same_ranges_for_any_batching(tmp_path):
    model = onnx.load(str(MODELS / "cnn_legacy.onnx"))
    inputs = feeds.model_inputs(model)
    names = [node.output[0] for node in model.graph.node]
    stacked = _samples(model, seed=1)
    datasets = {
        label: DataSet(DataSource(npz=_write(tmp_path / str(i), stacked, sizes)), inputs)
        for i, (label, sizes) in enumerate(GROUPINGS.items())
        if label != "uneven"
    }
    for calibrator in CALIBRATORS:
        ranges = {
            label: calibrate(model, data, names, calibrator, use_cache=False).ranges
            for label, data in datasets.items()
        }
        assert ranges["one feed"] == ranges["one per sample"], calibrator


class _Spy:
    """ONNX Runtime sessions that record the shapes of the data inputs of every run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, data_inputs: set[str]) -> None:
        self.sessions: list[list[dict[str, tuple]]] = []
        real = ort.InferenceSession
        spy = self

        class Session(real):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **kwargs)
                spy.sessions.append([])
                self._runs = spy.sessions[-1]

            def run(self, output_names, input_feed, run_options=None):
                shapes = {k: np.shape(v) for k, v in input_feed.items() if k in data_inputs}
                self._runs.append(shapes)
                return super().run(output_names, input_feed, run_options)

        monkeypatch.setattr(ort, "InferenceSession", Session)


def test_a_feed_larger_than_the_budget_runs_one_sample_at_a_time(tmp_path, monkeypatch):
    """One batch-8 feed whose exposed tensors need several budgets: ONNX Runtime is fed one
    sample per run, and the tensor groups are sized for one sample (one pass over the data
    here, where the whole feed would have needed several)."""
    model = onnx.load(str(MODELS / "cnn_legacy.onnx"))
    inputs = feeds.model_inputs(model)
    names = [node.output[0] for node in model.graph.node]
    batch = {"pixel_values": np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)}
    budget = 256 << 10
    assert len(groups(model, names, budget, {"pixel_values": (8, 3, 32, 32)})) > 1
    assert len(groups(model, names, budget, {"pixel_values": (1, 3, 32, 32)})) == 1
    data = DataSet(DataSource(npz=_write(tmp_path / "one", batch, [8])), inputs)
    spy = _Spy(monkeypatch, {"pixel_values"})
    seen: list[int] = []
    count = collect(model, data, names, lambda n, a: seen.append(a.shape[0]), budget)
    assert count == 1  # feeds streamed
    assert spy.sessions == [[{"pixel_values": (1, 3, 32, 32)}] * 8]
    assert set(seen) == {1} and len(seen) == 8 * len(names)


def _model(inputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    """y = x * (the other input, summed to a scalar and cast to float)."""
    other = inputs[1].name
    nodes = [
        helper.make_node("Cast", [other], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["f"], ["s"], keepdims=0),
        helper.make_node("Mul", ["x", "s"], ["y"]),
    ]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", inputs, [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_scalar_input_goes_whole_to_every_sample(tmp_path, monkeypatch):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    rate = helper.make_tensor_value_info("sr", TensorProto.INT64, [])
    model = _model([x, rate])
    feed = {"x": np.ones((3, 4), np.float32), "sr": np.array(16000, np.int64)}
    data = DataSet(DataSource(npz=_write(tmp_path / "d", feed, [3])), feeds.model_inputs(model))
    spy = _Spy(monkeypatch, {"x", "sr"})
    collect(model, data, ["s", "y"], lambda n, a: None)
    assert spy.sessions == [[{"x": (1, 4), "sr": ()}] * 3]


def test_a_feed_whose_inputs_fix_their_leading_dim_runs_whole(tmp_path, monkeypatch):
    """A recurrent state [2, batch, 4] (Silero's layout) fixes its leading dim: cutting the
    feed along it would cut the state's layers, not samples."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4])
    model = _model([x, state])
    feed = {"x": np.ones((3, 4), np.float32), "state": np.ones((2, 3, 4), np.float32)}
    data = DataSet(DataSource(npz=_write(tmp_path / "d", feed, [3])), feeds.model_inputs(model))
    spy = _Spy(monkeypatch, {"x", "state"})
    collect(model, data, ["y"], lambda n, a: None)
    assert spy.sessions == [[{"x": (3, 4), "state": (2, 3, 4)}]]


def test_cut_gives_views_and_refuses_leading_axes_that_disagree():
    infos = [
        feeds.InputInfo("a", np.dtype(np.float32), ("batch", 2)),
        feeds.InputInfo("b", np.dtype(np.float32), (None, 2)),
        feeds.InputInfo("c", np.dtype(np.float32), ("sequence", 2)),
    ]
    a, b = np.zeros((4, 2), np.float32), np.ones((4, 2), np.float32)
    assert samples_in({"a": a, "b": b}, infos) == 4
    parts = list(cut({"a": a, "b": b}, infos, rows=3))
    assert [p["a"].shape[0] for p in parts] == [3, 1]
    assert all(np.shares_memory(p["a"], a) for p in parts)
    assert samples_in({"a": a, "b": b[:2]}, infos) is None  # leading sizes differ
    assert samples_in({"a": a, "c": b}, infos) is None  # two named leading dims
    whole = {"a": a, "c": b}
    assert next(cut(whole, infos)) is whole
