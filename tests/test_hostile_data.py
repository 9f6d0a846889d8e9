"""Hostile data: scripts that exit, crash or hang in their child process; data that cannot
gate (NaN, Inf, no rows, no outputs) and the strict JSON trtopt writes; bad tensors, images
and arrays. Each case is exit 2 naming the file: never a hang, a crash or a faked success."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import trtopt
from helpers import QUICKSTART_MODEL, hostile_recipe
from trtopt import jsontext
from trtopt.cli import main

pytestmark = pytest.mark.usefixtures("keep_sigterm")


def _script_recipe(tmp_path: Path, script: str, **source: object) -> Path:
    (tmp_path / "data.py").write_text(script)
    data = {"script": str(tmp_path / "data.py"), **source}
    return hostile_recipe(tmp_path, check={"samples": 2, "latency_runs": 0, "data": data})


FEED = "{'pixel_values': np.zeros((1, 3, 32, 32), np.float32)}"


# -- data scripts run in a child process --------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("import os\nos._exit(0)\n", "exited with code 0"),
        (
            f"import os\nimport numpy as np\ndef load_data():\n    yield {FEED}\n    os._exit(0)\n",
            "exited with code 0 before load_data() finished (item 1)",
        ),
        (
            "import os, signal\ndef load_data():\n    os.kill(os.getpid(), signal.SIGKILL)\n"
            "    yield {}\n",
            "killed by signal 9",
        ),
        ("def load_data():\n    while True:\n        pass\n    yield {}\n", "timeout_s=1 s"),
        ("import time\ntime.sleep(60)\n", "timeout_s=1 s"),
    ],
    ids=["os._exit-at-import", "os._exit-while-yielding", "sigkill", "endless-loop", "hang"],
)
def test_a_data_script_that_exits_or_hangs_is_a_data_error(tmp_path, capsys, script, message):
    recipe = _script_recipe(tmp_path, script, timeout_s=1)
    assert main(["compile", str(recipe), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "data.py" in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_data_script_runs_in_a_child_and_its_prints_do_not_corrupt_the_feeds(tmp_path, capfd):
    script = (
        "import os, sys\nimport numpy as np\nprint('noise on stdout')\n"
        "sys.stdout.buffer.write(b'F' * 64)\n"
        "def load_data():\n"
        "    for i in range(2):\n"
        "        print('pid', os.getpid())\n"
        "        yield {'pixel_values': np.full((1, 3, 32, 32), i / 2, np.float32)}\n"
    )
    result = trtopt.compile(_script_recipe(tmp_path, script), use_cache=False)
    assert result.exit_code == 0, result.error
    assert result.report["accuracy"]["samples"] == 2
    err = capfd.readouterr().err
    assert "noise on stdout" in err and f"pid {os.getpid()}" not in err and "pid " in err, err


def test_a_data_script_timeout_must_be_positive(tmp_path, capsys):
    recipe = _script_recipe(tmp_path, "", timeout_s=0)
    assert main(["validate", str(recipe)]) == 2
    assert "timeout_s" in capsys.readouterr().err


# -- data that cannot gate ----------------------------------------------------------------------


def _npz(tmp_path: Path, array: np.ndarray) -> str:
    np.savez(tmp_path / "bad.npz", pixel_values=array)
    return str(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "1 NaN or infinite"), (np.inf, "1 NaN or infinite"), (None, "no samples")],
    ids=["nan", "inf", "no-rows"],
)
def test_check_data_that_cannot_gate_exits_2(tmp_path, capsys, value, message):
    array = np.zeros((0 if value is None else 1, 3, 32, 32), np.float32)
    if value is not None:
        array[0, 1, 2, 3] = value
    check = {"samples": 1, "latency_runs": 0, "data": {"npz": _npz(tmp_path, array)}}
    assert main(["compile", str(hostile_recipe(tmp_path, check=check)), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "bad.npz (sample 0)" in err and "pixel_values" in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_scalar_npy_exits_2_naming_it(tmp_path, capsys):
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "pixel_values.npy", np.float32(1.0))
    check = {"samples": 1, "latency_runs": 0, "data": {"npy": str(tmp_path / "npy")}}
    assert main(["compile", str(hostile_recipe(tmp_path, check=check)), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "pixel_values.npy" in err and "0-d" in err, err


def test_a_model_with_no_outputs_exits_2(tmp_path, capsys):
    model = onnx.load(QUICKSTART_MODEL)
    del model.graph.output[:]
    onnx.save(model, tmp_path / "m.onnx")
    assert main(["compile", str(hostile_recipe(tmp_path, model="m.onnx")), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "m.onnx" in err and "no outputs" in err, err


def _strict(text: str) -> object:
    def refuse(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_trtopt_writes_strict_json_and_names_non_finite_numbers(tmp_path):
    value = {"metrics": {"a": float("nan"), "b": np.float32("inf"), "c": -math.inf, "d": None}}
    text = jsontext.dumps(value)
    assert _strict(text) == {"metrics": {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": None}}
    assert [jsontext.number(v) for v in ("Infinity", "-Infinity", 0.5, "x", True)] == [
        math.inf,
        -math.inf,
        0.5,
        None,
        None,
    ]
    # A metric that became NaN is a regression for trtopt diff.
    assert trtopt.diff.regressed("cosine", 0.99, "NaN", 0.1, 1e-5)
    assert not trtopt.diff.regressed("cosine", "NaN", "NaN", 0.1, 1e-5)
    # A compile's report.json, its cache manifests and `check --json` parse strictly.
    result = trtopt.compile(hostile_recipe(tmp_path), cache_dir=tmp_path / "cache")
    assert result.exit_code == 0
    _strict((tmp_path / "out" / "report.json").read_text())
    for manifest in (tmp_path / "cache").rglob("manifest.json"):
        _strict(manifest.read_text())


# -- models whose external data lies about its bytes --------------------------------------------


def _external_model(tmp_path: Path) -> tuple[Path, onnx.TensorProto]:
    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="ext.data", size_threshold=0)
    return path, onnx.load(path, load_external_data=False)


def _set(tensor: onnx.TensorProto, key: str, value: str) -> None:
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value
            return
    tensor.external_data.add(key=key, value=value)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "which holds 100 bytes"),
        ("offset=4096", "reads bytes 4096..4352"),
        ("offset=-8", "'-8', not a non-negative integer"),
        ("offset=abc", "'abc', not a non-negative integer"),
        ("length=64", "declares 64 bytes"),
        ("location=ext\0.data", "NUL"),
        ("huge", "reads bytes 0..2400000000"),
    ],
)
def test_external_data_that_lies_is_a_model_error_naming_the_tensor(
    tmp_path, capsys, damage, message
):
    path, model = _external_model(tmp_path)
    tensor = model.graph.initializer[0]
    if damage == "truncate":
        (tmp_path / "ext.data").write_bytes((tmp_path / "ext.data").read_bytes()[:100])
    elif damage == "huge":
        del tensor.dims[:]
        tensor.dims.extend([600_000_000])
        _set(tensor, "length", str(2_400_000_000))
    else:
        key, value = damage.split("=", 1)
        _set(tensor, key, value)
    if damage not in ("truncate",):
        path.write_bytes(model.SerializeToString())
    with pytest.raises(trtopt.ModelError, match="weight") as error:
        trtopt.load_model(path)
    assert message in str(error.value) and str(path) in str(error.value)
    recipe = hostile_recipe(
        tmp_path, model=str(path), inputs={}, check={"samples": 1, "latency_runs": 0}
    )
    assert main(["compile", str(recipe), "--no-cache"]) == 2
    assert "weight" in capsys.readouterr().err
