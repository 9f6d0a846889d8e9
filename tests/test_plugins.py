"""Plugin passes: the example in passes/ loaded through a recipe, and an entry-point plugin."""

from __future__ import annotations

import json

import onnx
from onnx import TensorProto, helper

import trtopt
from helpers import MODELS, ROOT, run_cli
from trtopt.model import save_model

ENTRY_POINT_PLUGIN = '''
from trtopt import Pass, register_pass


@register_pass("drop-doc-strings")
class DropDocStrings(Pass):
    """An installed plugin pass."""

    def run(self, graph, ctx):
        graph.doc_string = ""
        return graph
'''


def _unnamed_model(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Neg", ["b"], ["y"], name="Relu_0"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    save_model(model, path)


def test_example_plugin_loads_through_a_recipe(write_recipe, tmp_path):
    _unnamed_model(tmp_path / "m.onnx")
    recipe = write_recipe(
        {
            "name": "plugin",
            "model": "m.onnx",
            "plugins": [str(ROOT / "passes" / "name_nodes.py")],
            "passes": [{"name-nodes": {"prefix": "n/"}}],
            "check": {"samples": 1, "latency_runs": 0},
        }
    )
    result = trtopt.compile(recipe)
    assert result.exit_code == 0
    names = [n.name for n in onnx.load(str(result.artifact)).graph.node]
    assert names == ["n/Relu_0", "n/Relu_1", "Relu_0"]
    assert result.report["passes"][0]["changed"] is True


def test_plugin_that_fails_to_import_is_a_recipe_error(write_recipe, tmp_path):
    (tmp_path / "broken.py").write_text("import does_not_exist\n")
    recipe = write_recipe("name: x\nmodel: m.onnx\nplugins:\n  - broken.py\n")
    result = run_cli("compile", str(recipe))  # validate parses plugins, never imports them
    assert result.returncode == 2
    assert "recipe.yaml:4:5: plugin" in result.stderr
    assert "ModuleNotFoundError: No module named 'does_not_exist'" in result.stderr


def test_entry_point_plugins_are_discovered(tmp_path):
    site = tmp_path / "site"
    (site / "trtopt_extra").mkdir(parents=True)
    (site / "trtopt_extra" / "__init__.py").write_text(ENTRY_POINT_PLUGIN)
    dist = site / "trtopt_extra-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: trtopt-extra\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[trtopt.passes]\nextra = trtopt_extra\n")
    env = {"PYTHONPATH": str(site)}
    listed = run_cli("passes", env=env).stdout
    assert "drop-doc-strings\n    An installed plugin pass." in listed
    out = tmp_path / "o.onnx"
    model = str(MODELS / "cnn_legacy.onnx")
    done = run_cli("optimize", model, str(out), "--passes", "drop-doc-strings,cleanup", env=env)
    assert done.returncode == 0, done.stderr
    assert out.is_file()
    schema = json.loads(run_cli("schema", env=env).stdout)
    assert "drop-doc-strings" in schema["properties"]["passes"]["items"]["anyOf"][0]["enum"]
