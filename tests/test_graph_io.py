"""Weights left on disk: lazy external-data constants, streaming saves, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import trtopt
from transformer_model import fp16_recipe, make_transformer, size_on_disk
from trtopt import graph_io
from trtopt.cli import main
from trtopt.model import load_model


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """Two layers, hidden 64: 0.5 MB of weights in an external data file."""
    return make_transformer(tmp_path_factory.mktemp("small") / "small.onnx", 2, 64, heads=4)


@pytest.fixture
def feed() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((2, 5, 64), dtype=np.float32)


def test_weights_stay_on_disk_until_read_and_are_not_cached(small):
    graph = graph_io.import_graph(load_model(small, external_data=False), small.parent)
    weight = graph.tensors()["layer0.fc1.weight"]
    assert isinstance(weight._values, graph_io.ExternalValues)
    values = graph_io.peek(weight)
    assert values.shape == (64, 256) and values.dtype == np.float32 and values.std() > 0.05
    assert isinstance(weight._values, graph_io.ExternalValues)  # peek kept nothing
    reference = onnx.numpy_helper.to_array(
        next(t for t in onnx.load(str(small)).graph.initializer if t.name == weight.name)
    )
    np.testing.assert_array_equal(values, reference)


def test_save_copies_weights_file_to_file_and_leaves_the_graph_as_it_was(small, tmp_path, feed):
    graph = graph_io.import_graph(load_model(small, external_data=False), small.parent)
    # One weight changed by a pass (in memory), the rest untouched on disk.
    changed = graph.tensors()["layer1.fc2.weight"]
    changed.values = graph_io.peek(changed) * 2
    out = tmp_path / "out" / "model.onnx"
    files = graph_io.save_graph(graph, out, external_data=True)
    assert [f.name for f in files] == ["model.onnx", "model.onnx.data"]
    assert isinstance(graph.tensors()["layer0.fc1.weight"]._values, graph_io.ExternalValues)
    header = onnx.load(str(out), load_external_data=False)
    for tensor in header.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = onnx.external_data_helper.ExternalDataInfo(tensor)
            assert info.location == "model.onnx.data" and info.offset % graph_io.ALIGNMENT == 0
            assert info.length >= graph_io.SIZE_THRESHOLD
        else:
            assert len(onnx.numpy_helper.to_array(tensor).tobytes()) < graph_io.SIZE_THRESHOLD
    loaded = {t.name: t for t in onnx.load(str(out)).graph.initializer}
    np.testing.assert_array_equal(
        onnx.numpy_helper.to_array(loaded["layer1.fc2.weight"]), changed.values
    )
    # The saved model computes what the original does, but for the doubled weight.
    graph.tensors()["layer1.fc2.weight"].values = changed.values / 2
    again = tmp_path / "again" / "model.onnx"
    graph_io.save_graph(graph, again, external_data=True)
    np.testing.assert_allclose(_run(again, feed), _run(small, feed), rtol=0, atol=1e-5)
    assert not np.allclose(_run(out, feed), _run(small, feed), atol=1e-3)


def test_small_models_with_external_data_are_saved_inline(small, tmp_path, feed):
    files = trtopt.optimize_file(small, tmp_path / "model.onnx")
    assert [f.name for f in files] == ["model.onnx"]
    np.testing.assert_allclose(_run(files[0], feed), _run(small, feed), rtol=1e-4, atol=1e-4)


def test_in_memory_export_loads_on_disk_weights(small, feed, tmp_path):
    """A graph exported in memory (constant folding's subgraphs, optimize()) is complete."""
    model = trtopt.optimize(small, passes=["cleanup"])
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.testing.assert_allclose(_run(tmp_path / "m.onnx", feed), _run(small, feed), atol=1e-6)


def test_dedup_merges_equal_on_disk_weights_of_one_shape(tmp_path):
    weight = np.arange(2048, dtype=np.float32).reshape(32, 64)
    tensors = {"a": weight, "b": weight.copy(), "c": weight.reshape(64, 32)}
    nodes = [
        onnx.helper.make_node("MatMul", ["x", "a"], ["ya"]),
        onnx.helper.make_node("MatMul", ["x", "b"], ["yb"]),
        onnx.helper.make_node("MatMul", ["ya", "c"], ["yc"]),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32])],
        [
            onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, k])
            for n, k in (("yb", 64), ("yc", 32))
        ],
        [onnx.numpy_helper.from_array(v, k) for k, v in tensors.items()],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data")
    optimized = trtopt.optimize(tmp_path / "m.onnx", passes=["dedup-initializers"])
    inputs = [n.input[1] for n in optimized.graph.node]
    assert inputs == ["a", "a", "c"]


def test_cli_optimize_external_data_output_loads(small, tmp_path, feed, capsys):
    out = tmp_path / "out" / "opt.onnx"
    assert main(["optimize", str(small), str(out), "--external-data"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["opt.onnx", "opt.onnx.data"]
    load_model(out)  # the data file's name recorded in the model is the final one
    np.testing.assert_allclose(_run(out, feed), _run(small, feed), rtol=1e-4, atol=1e-4)
    assert "wrote" in capsys.readouterr().out


def test_large_models_measure_latency_one_session_at_a_time(small, tmp_path, monkeypatch):
    from trtopt import pipeline

    (tmp_path / "r.yaml").write_text(fp16_recipe(small, 64, latency_runs=3))
    together = trtopt.compile(tmp_path / "r.yaml", output_dir=tmp_path / "a", use_cache=False)
    monkeypatch.setattr(pipeline, "EXTERNAL_DATA_THRESHOLD", 1024)
    alone = trtopt.compile(tmp_path / "r.yaml", output_dir=tmp_path / "b", use_cache=False)
    assert together.report["latency"]["interleaved"] is True
    assert alone.report["latency"]["interleaved"] is False
    for who in ("reference", "artifact"):
        assert alone.report["latency"][who]["runs"] == 3
        assert len(alone.report["latency"][who]["samples_ms"]) == 3


PEAK_SCRIPT = """
import json, re, sys, trtopt
def peak():
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024
marks = {}
def progress(message):
    if message.startswith("build"):
        marks["passes"] = peak()
result = trtopt.compile(sys.argv[1], output_dir=sys.argv[2], progress=progress, use_cache=False)
print(json.dumps({"exit": result.exit_code, "passes": marks["passes"], "peak": peak()}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM (Linux)")
def test_transformer_over_2gib_compiles_to_fp16_within_1_5x_its_size(tmp_path):
    """Passes over a 2+ GiB model (cleanup, folding, the fusions, FP16 with its range guard)
    peak at <= 1.5x its size on disk, the reference session included (measured: 1.13x). The
    whole compile stays near that too (measured: 1.38x; the FP16 artifact's ONNX Runtime CPU
    session holds FP32 copies of the weights it casts)."""
    model = make_transformer(tmp_path / "big.onnx", 11, 2048, heads=16)
    size = size_on_disk(model)
    assert size > 2 * 2**30
    (tmp_path / "big.yaml").write_text(fp16_recipe(model, 2048))
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "big.yaml"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["exit"] == 0
    assert measured["passes"] <= 1.5 * size, measured["passes"] / size
    assert measured["peak"] <= 1.6 * size, measured["peak"] / size
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == "pass"
    # Each node's local-error session would hold its weights again: not measured this large.
    (fp16,) = [p for p in report["passes"] if p["name"] == "precision"]
    assert fp16["details"]["local_error"].startswith("not measured: 2.06 GiB of weights")
    assert report["build"]["files"] == ["model.onnx", "model.onnx.data"]
    data = tmp_path / "out" / "model.onnx.data"
    assert 0.45 * size < data.stat().st_size < 0.55 * size  # FP16 weights
    header = onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False)
    ops = {n.op_type for n in header.graph.node}
    assert "LayerNormalization" in ops and "ReduceMean" not in ops  # the fusions ran
    weights = [t for t in header.graph.initializer if np.prod(t.dims) >= 2048 * 2048]
    assert len(weights) == 11 * 6 and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)


@pytest.mark.slow
def test_a_single_tensor_over_2gib_passes_through(tmp_path):
    """Protobuf cannot hold one tensor over 2 GiB; copied file to file, it never has to."""
    count = 600 * 2**20  # float32 elements: 2.34 GiB in one tensor
    nbytes = count * 4
    with open(tmp_path / "big.onnx.data", "wb") as handle:
        handle.truncate(nbytes)  # sparse: zero pages cost no disk
        handle.seek(nbytes - 4)
        handle.write(np.float32(7.0).tobytes())  # the last value, to prove the bytes moved
    weight = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[count])
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "big.onnx.data"), ("offset", "0"), ("length", str(nbytes))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Identity", ["x"], ["i"]),
            onnx.helper.make_node("Add", ["i", "w"], ["y"]),
        ],
        "big",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [count])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [count])],
        [weight],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "big.onnx"))

    out = tmp_path / "out" / "big.onnx"
    assert main(["optimize", str(tmp_path / "big.onnx"), str(out), "--passes", "cleanup"]) == 0
    header = load_model(out, external_data=False)
    assert [n.op_type for n in header.graph.node] == ["Add"]
    data = out.parent / "big.onnx.data"
    info = onnx.external_data_helper.ExternalDataInfo(header.graph.initializer[0])
    assert info.length == nbytes and data.stat().st_size == info.offset + nbytes
    with open(data, "rb") as handle:
        handle.seek(info.offset + nbytes - 4)
        assert np.frombuffer(handle.read(4), np.float32)[0] == 7.0
