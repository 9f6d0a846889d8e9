"""Model loading and saving: bad files, external data (and its safety), > 2 GiB models."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import MODELS
from trtopt import ModelError
from trtopt.model import load_model, model_sha256, save_model


def _matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="model file not found") as info:
        load_model(tmp_path / "nope.onnx")
    assert info.value.exit_code == 2


def test_text_file_is_not_onnx(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelError, match=r"bad\.onnx: (not a valid ONNX model|invalid ONNX)"):
        load_model(path)


def test_empty_file_is_not_onnx(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        load_model(path)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_protobuf(tmp_path, keep):
    data = (MODELS / "cnn_legacy.onnx").read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelError, match=r"truncated\.onnx"):
        load_model(path)


def test_external_data_round_trip(tmp_path):
    weight = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    files = save_model(_matmul_model(weight), tmp_path / "m.onnx", external_data=True)
    assert [f.name for f in files] == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx.data").stat().st_size == weight.nbytes
    loaded = load_model(tmp_path / "m.onnx")
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), weight)
    # the hash covers the weights, not only the small header
    before = model_sha256(tmp_path / "m.onnx")
    with open(tmp_path / "m.onnx.data", "r+b") as handle:
        handle.write(b"\x00\x00\x80\x7f")
    assert model_sha256(tmp_path / "m.onnx") != before


def test_missing_external_data_file(tmp_path):
    weight = np.ones((64, 64), np.float32)
    save_model(_matmul_model(weight), tmp_path / "m.onnx", external_data=True)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(ModelError, match=r"external data file 'm\.onnx\.data' of tensor 'w'"):
        load_model(tmp_path / "m.onnx")


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 256)
    folder = tmp_path / "model"
    model = _matmul_model(np.ones((8, 8), np.float32))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    folder.mkdir()
    onnx.save(model, str(folder / "m.onnx"))
    with pytest.raises(ModelError, match="outside the model's folder"):
        load_model(folder / "m.onnx")


def test_small_models_are_saved_inline_and_deterministically(tmp_path):
    model = load_model(MODELS / "bert_dynamo.onnx")
    save_model(model, tmp_path / "a.onnx")
    save_model(model, tmp_path / "b.onnx")
    assert not list(tmp_path.glob("*.data"))
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.slow
def test_model_over_2gib_loads_optimizes_and_saves(tmp_path):
    """A > 2 GiB model only exists with external data; it must survive load -> pass -> save.

    Five 440 MiB weights (each under protobuf's 2 GiB per-message limit) in one sparse data
    file, chained by Add nodes, plus an Identity that cleanup removes.
    """
    import trtopt

    count, size = 5, 110 * 2**20  # float32 elements per weight
    nbytes = size * 4
    with open(tmp_path / "big.onnx.data", "wb") as handle:
        handle.truncate(count * nbytes)  # sparse: zero pages cost no disk
        handle.seek(nbytes - 4)
        handle.write(np.float32(7.0).tobytes())  # last value of w0, to prove data moved
    nodes, inits, previous = [], [], "x"
    for i in range(count):
        tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[size])
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", "big.onnx.data"),
            ("offset", str(i * nbytes)),
            ("length", str(nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        inits.append(tensor)
        nodes.append(helper.make_node("Add", [previous, f"w{i}"], [f"s{i}"]))
        previous = f"s{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(tmp_path / "big.onnx"))

    optimized = trtopt.optimize(tmp_path / "big.onnx", passes=["cleanup"])
    assert [n.op_type for n in optimized.graph.node] == ["Add"] * count
    out = tmp_path / "out" / "big.onnx"
    files = save_model(optimized, out)
    assert [f.name for f in files] == ["big.onnx", "big.onnx.data"]
    assert out.stat().st_size < 10_000
    assert (out.parent / "big.onnx.data").stat().st_size == count * nbytes
    header = onnx.load(str(out), load_external_data=False)
    w0 = next(t for t in header.graph.initializer if t.name == "w0")
    offset = int(next(e.value for e in w0.external_data if e.key == "offset"))
    with open(out.parent / "big.onnx.data", "rb") as handle:
        handle.seek(offset + nbytes - 4)
        assert np.frombuffer(handle.read(4), np.float32)[0] == 7.0
    del optimized
    reloaded = load_model(out)
    assert os.path.getsize(out.parent / "big.onnx.data") > 2 * 1024**3
    assert len(reloaded.graph.initializer) == count
