"""Models trtopt cannot feed or ONNX Runtime cannot run are the user's to fix: exit 2 with one
line naming the opset, op, domain, node names or input (issue 12, item 10), not an internal
error (exit 3)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from helpers import QUICKSTART
from trtopt.cli import main


def _save(path: Path, nodes, inputs, outputs, opsets=(("", 17),)) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _floats(name: str):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3])


def _chain(path: Path, opset: int = 17, names=("a", "b")) -> Path:
    nodes = [
        helper.make_node("Relu", ["x"], ["t"], name=names[0]),
        helper.make_node("Abs", ["t"], ["y"], name=names[1]),
    ]
    return _save(path, nodes, [_floats("x")], [_floats("y")], opsets=(("", opset),))


def _compile(tmp_path: Path, model: Path, capsys) -> tuple[int, str]:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nmodel: {model.name}\ncheck: {{samples: 2}}\noutput: out\n")
    code = main(["compile", "--no-cache", str(recipe)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("opset", "says"),
    [
        (1, "no implementation of Relu at opset 1 (node 'a'"),
        (999, "imports opset 999 of ai.onnx, which ONNX Runtime does not support"),
    ],
)
def test_an_opset_onnx_runtime_cannot_run_is_exit_2(tmp_path, capsys, opset, says):
    code, err = _compile(tmp_path, _chain(tmp_path / "m.onnx", opset), capsys)
    assert (code, err.count("\n")) == (2, 1), err
    assert "m.onnx: " in err and says in err
    assert not (tmp_path / "out").exists()


def test_an_op_of_an_unregistered_domain_is_exit_2(tmp_path, capsys):
    node = helper.make_node("Foo", ["x"], ["y"], name="custom", domain="com.acme")
    model = _save(
        tmp_path / "m.onnx", [node], [_floats("x")], [_floats("y")], (("", 17), ("com.acme", 1))
    )
    code, err = _compile(tmp_path, model, capsys)
    assert code == 2, err
    assert "op Foo of domain 'com.acme' (node 'custom') is unknown to ONNX Runtime" in err


def test_duplicate_node_names_are_exit_2_naming_them(tmp_path, capsys):
    """ONNX Runtime calls such a model invalid and will not run it; trtopt names them."""
    code, err = _compile(tmp_path, _chain(tmp_path / "m.onnx", names=("a", "a")), capsys)
    assert code == 2, err
    assert "node names must be unique for ONNX Runtime; used more than once: 'a'" in err


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("sequence", "model input 'x' is a sequence(tensor(float)), not a tensor"),
        ("string", "model input 'x' is a tensor of string, for which no synthetic data"),
        ("bfloat16", "model input 'x' is a tensor of bfloat16, for which no synthetic data"),
    ],
)
def test_inputs_trtopt_cannot_feed_are_exit_2_naming_them(tmp_path, capsys, kind, says):
    if kind == "sequence":
        x = helper.make_tensor_sequence_value_info("x", TensorProto.FLOAT, None)
        nodes = [helper.make_node("SequenceLength", ["x"], ["y"], name="n")]
        y = helper.make_tensor_value_info("y", TensorProto.INT64, [])
    else:
        elem = TensorProto.STRING if kind == "string" else TensorProto.BFLOAT16
        x = helper.make_tensor_value_info("x", elem, [2])
        nodes = [helper.make_node("Identity", ["x"], ["y"], name="n")]
        y = helper.make_tensor_value_info("y", elem, [2])
    code, err = _compile(tmp_path, _save(tmp_path / "m.onnx", nodes, [x], [y]), capsys)
    assert code == 2, err
    assert says in err


def test_check_artifact_that_is_not_onnx_is_exit_2_naming_it(tmp_path, capsys):
    artifact = tmp_path / "model.onnx"
    artifact.write_text("not a model")
    golden = QUICKSTART.parent.parent / "golden" / "quickstart.npz"
    code = main(["check", "--artifact", str(artifact), "--golden", str(golden)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{artifact}: not a valid ONNX model" in err
