"""`trtopt lint` and the `lint` pass: each rule on a crafted graph, the committed exported models,
the real parser's errors by node, and --strict's exit code."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import trtopt
from helpers import EXPORTED
from trtopt.cli import main
from trtopt.errors import EXIT_USER, UserError
from trtopt.lint import RULES, LintError, lint_model

HAS_PARSER = importlib.util.find_spec("tensorrt_rtx") is not None
F = TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=(), opset=19, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=opsets)


def vi(name, dtype=F, shape=(1, 4)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def rules_hit(proto, target="tensorrt-10", **kwargs) -> dict[str, list]:
    report = lint_model(proto, target, parse=False, **kwargs)
    found: dict[str, list] = {}
    for finding in report.findings:
        found.setdefault(finding.rule, []).append(finding)
    return found


@pytest.mark.parametrize("path", EXPORTED, ids=lambda p: p.stem)
def test_exported_models_have_no_errors_for_any_target(path):
    for target in ("tensorrt-10", "tensorrt-11", "tensorrt-rtx"):
        report = lint_model(path, target)
        assert report.errors == [], report.format()
        assert {f.rule for f in report.warnings} <= {"dynamic-shape"}


def test_exported_models_with_profiles_are_clean():
    report = lint_model(EXPORTED[0], profiles={"pixel_values", "input_ids", "attention_mask"})
    assert report.findings == []


def test_unsupported_and_custom_operators_are_errors_naming_the_node():
    nodes = [
        helper.make_node("Unique", ["x"], ["u"], "uniq"),
        helper.make_node("Mystery", ["x"], ["y"], "myst", domain="com.example"),
    ]
    found = rules_hit(
        model(nodes, [vi("x")], [vi("u", shape=[None]), vi("y")], domains=["com.example"])
    )
    errors = {(f.node, f.op) for f in found["unsupported-op"] if f.level == "error"}
    assert errors == {("uniq", "Unique"), ("myst", "Mystery")}


def test_opset_outside_the_documented_range():
    proto = model([helper.make_node("Relu", ["x"], ["y"], "r")], [vi("x")], [vi("y")], opset=25)
    assert rules_hit(proto, "tensorrt-10")["opset"][0].level == "error"
    assert "opset" not in rules_hit(proto, "tensorrt-11")  # TensorRT 11 documents up to 25


def test_operator_restrictions_from_the_matrix():
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], "pool", kernel_shape=[2, 2], dilations=[2, 2]),
        helper.make_node("Resize", ["p", "", "scales"], ["r"], "resize", mode="cubic"),
        helper.make_node("TopK", ["f", "k"], ["v", "i"], "topk", sorted=0),
        helper.make_node("QuantizeLinear", ["f", "s", "zp"], ["q"], "quant"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], "dequant"),
    ]
    inits = [
        const("scales", np.ones(4, np.float32)),
        const("k", np.array([2], np.int64)),
        const("s", np.float32(0.1)),
        const("zp", np.int8(3)),
    ]
    outputs = [vi("r", shape=(1, 1, 4, 4)), vi("v"), vi("i", TensorProto.INT64), vi("dq")]
    inputs = [vi("x", shape=(1, 1, 8, 8)), vi("f")]
    found = rules_hit(model(nodes, inputs, outputs, inits))["op-restriction"]
    by_node = {f.node: f.message for f in found}
    assert "dilations" in by_node["pool"] and "cubic" in by_node["resize"]
    assert "sorted=0" in by_node["topk"]
    assert "zero point must be 0" in by_node["quant"] and "zero point" in by_node["dequant"]


def test_data_types():
    nodes = [
        helper.make_node("Cast", ["x"], ["d"], "to_double", to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["d"], ["u"], "to_uint8", to=TensorProto.UINT8),
        helper.make_node("Cast", ["u"], ["i"], "to_int64", to=TensorProto.INT64),
        helper.make_node("Sqrt", ["i"], ["y"], "sqrt_int"),
    ]
    outputs = [vi("y", TensorProto.INT64)]
    found = {(f.node, f.level) for f in rules_hit(model(nodes, [vi("x")], outputs))["dtype"]}
    assert ("to_double", "warning") in found  # DOUBLE is cast down
    assert ("to_uint8", "error") in found  # UINT8 only at the network's edges
    assert ("sqrt_int", "error") in found  # Sqrt lists no INT64


def test_dynamic_inputs_without_profiles():
    proto = model(
        [helper.make_node("Relu", ["x"], ["y"], "r")], [vi("x", shape=("n", 4))], [vi("y")]
    )
    assert rules_hit(proto)["dynamic-shape"][0].level == "warning"
    assert "dynamic-shape" not in rules_hit(proto, profiles={"x"})


def test_qdq_that_will_not_fuse():
    scale = const("s", np.float32(0.1))
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s"], ["q"], "quant"),
        helper.make_node("DequantizeLinear", ["q", "s"], ["dq"], "dequant"),
        helper.make_node("Softmax", ["dq"], ["y"], "softmax"),
        helper.make_node("Cast", ["q"], ["c"], "raw_int8", to=TensorProto.FLOAT),
    ]
    found = rules_hit(model(nodes, [vi("x")], [vi("y"), vi("c")], [scale]))["qdq-fusion"]
    levels = {(f.node, f.level) for f in found}
    assert ("dequant", "warning") in levels  # Softmax runs in float: the pair does not fuse
    assert ("quant", "error") in levels  # an INT8 tensor reaching a Cast, not a DQ


def test_precision_round_trip_and_metadata_hints():
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], "to_half", to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["y"], "to_float", to=TensorProto.FLOAT),
    ]
    proto = model(nodes, [vi("x")], [vi("y")])
    helper.set_model_props(proto, {"fp16": "true"})
    found = rules_hit(proto)["precision"]
    assert [f.node for f in found] == ["to_half", None]
    assert "ignores" in found[1].message


def test_every_rule_cites_its_document():
    assert set(RULES) == {
        "opset",
        "unsupported-op",
        "op-restriction",
        "dtype",
        "dynamic-shape",
        "qdq-fusion",
        "precision",
        "fp8-compute-capability",
        "int4-compute-capability",
    }
    assert all(rule.source.startswith("https://") for rule in RULES.values())


def int32_dq_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("DequantizeLinear", ["b", "s"], ["bias"], "dq_bias"),
        helper.make_node("Add", ["x", "bias"], ["y"], "add"),
    ]
    inits = [const("b", np.arange(4, dtype=np.int32)), const("s", np.float32(0.5))]
    return model(nodes, [vi("x")], [vi("y")], inits)


@pytest.mark.skipif(not HAS_PARSER, reason="tensorrt_rtx (the parser) is not installed")
def test_real_parser_errors_map_to_the_node_with_cause_and_fix(tmp_path):
    report = lint_model(int32_dq_model(), "tensorrt-rtx")
    assert report.parser and report.parser.startswith("TensorRT for RTX")
    (finding,) = report.errors
    assert (finding.rule, finding.node, finding.op) == ("parser", "dq_bias", "DequantizeLinear")
    assert "INT32 bias" in finding.message and "Int32" in finding.message
    assert "catchCudaError" not in finding.message
    assert finding.fix.startswith("keep that tensor in floating point")


@pytest.mark.skipif(not HAS_PARSER, reason="tensorrt_rtx (the parser) is not installed")
def test_cli_strict_exits_2_and_json_lists_findings(tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    onnx.save(int32_dq_model(), path)
    assert main(["lint", str(path), "--target", "tensorrt-11"]) == 0
    assert main(["lint", str(path), "--target", "tensorrt-11", "--strict"]) == EXIT_USER
    captured = capsys.readouterr()
    assert "node 'dq_bias' (DequantizeLinear)" in captured.out
    assert "error:" in captured.err and "1 error(s)" in captured.err
    assert main(["lint", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["errors"] == 1 and data["findings"][0]["node"] == "dq_bias"


def test_library_strict_raises_a_user_error():
    proto = model(
        [helper.make_node("Unique", ["x"], ["u"], "uniq")], [vi("x")], [vi("u", shape=[None])]
    )
    with pytest.raises(LintError) as caught:
        trtopt.lint_model(proto, "tensorrt-10", strict=True, parse=False)
    assert caught.value.exit_code == EXIT_USER and "uniq" in caught.value.message
    with pytest.raises(UserError, match="unknown lint target 'tensorrt-9'"):
        trtopt.lint_model(proto, "tensorrt-9")


def test_lint_pass_leaves_the_graph_alone_and_is_listed():
    proto = onnx.load(str(EXPORTED[0]))
    assert "lint" in trtopt.available_passes()
    optimized = trtopt.optimize(proto, passes=[{"lint": {"target": "tensorrt-11"}}])
    assert [n.op_type for n in optimized.graph.node] == [n.op_type for n in proto.graph.node]


def test_the_gpus_a_recipe_builds_for_reach_the_lint_rules(tmp_path, capsys, write_recipe):
    from test_quantize_fp8 import fp8_bert

    model = tmp_path / "fp8.onnx"
    onnx.save(fp8_bert(tmp_path), str(model))
    # The command line names them.
    args = ["lint", str(model), "--target", "tensorrt-rtx", "--no-parse", "--strict"]
    assert main([*args, "--compute-capability", "8.6"]) == EXIT_USER
    assert "fp8-compute-capability" in capsys.readouterr().out
    assert main([*args, "--compute-capability", "8.9"]) == 0
    # A recipe's lint pass checks the GPUs its build names, unless it names its own.
    recipe = {
        "name": "fp8-lint",
        "model": str(model),
        "inputs": {},
        "passes": [{"lint": {"target": "tensorrt-rtx", "parse": False}}],
        "build": {"backend": "tensorrt-rtx", "tensorrt_rtx": {"compute_capabilities": ["8.6"]}},
        "check": {"samples": 1, "latency_runs": 0},
        "output": str(tmp_path / "out"),
    }
    with pytest.raises(LintError, match=r"8\.6"):
        trtopt.compile(write_recipe(recipe), use_cache=False)
