"""Many recipes at once: `trtopt compile A B C --jobs N`, one table, the worst exit code."""

from __future__ import annotations

import trtopt
from helpers import ROOT, run_cli

QUICKSTART_MODEL = ROOT / "recipes" / "models" / "quickstart.onnx"

SCALE_PLUGIN = """
import numpy as np
import onnx_graphsurgeon as gs
from trtopt import Pass, register_pass


@register_pass("scale-output")
class ScaleOutput(Pass):
    \"\"\"Multiply the first graph output by 2 (a deliberately wrong pass).\"\"\"

    exact = False  # changes the numbers on purpose: the accuracy check judges it

    def run(self, graph, ctx):
        out = graph.outputs[0]
        hidden = gs.Variable(out.name + "_unscaled", dtype=out.dtype)
        producer = out.inputs[0]
        producer.outputs[producer.outputs.index(out)] = hidden
        graph.layer(op="Mul", inputs=[hidden, gs.Constant("two", np.array(2.0, np.float32))],
                    outputs=[out])
        return graph
"""


def _recipe(name: str, **changes) -> dict:
    recipe = {
        "name": name,
        "model": str(QUICKSTART_MODEL),
        "inputs": {"pixel_values": {"range": [0.0, 1.0]}},
        "passes": ["cleanup"],
        "check": {"samples": 1, "dims": {"batch": 1}, "latency_runs": 0},
    }
    recipe.update(changes)
    return recipe


def _recipes(tmp_path, write_recipe) -> list:
    plugin = tmp_path / "scale.py"
    plugin.write_text(SCALE_PLUGIN)
    return [
        write_recipe(_recipe("good"), "good.yaml"),
        write_recipe(
            _recipe("wrong", passes=["scale-output"], plugins=[str(plugin)]), "wrong.yaml"
        ),
        write_recipe(_recipe("missing", model="nowhere.onnx"), "missing.yaml"),
        write_recipe("name: [unclosed\n", "broken.yaml"),
    ]


def test_library_runs_every_recipe_and_reports_the_worst(tmp_path, write_recipe):
    paths = _recipes(tmp_path, write_recipe)
    seen = []
    results = trtopt.compile_many(paths, output_dir=tmp_path / "out", progress=seen.append)
    assert [(r.verdict, r.exit_code) for r in results] == [
        ("pass", 0),
        ("fail", 1),
        ("error", 2),
        ("error", 2),
    ]
    assert len(seen) == 4
    assert "model file not found" in results[2].message
    assert "broken.yaml:2" in results[3].message
    assert (tmp_path / "out" / "good" / "model.onnx").is_file()
    assert (tmp_path / "out" / "wrong" / "report.json").is_file()  # exit 1 still writes
    assert trtopt.worst_exit_code(results) == 2
    table = trtopt.summary_table(results)
    assert table.splitlines()[0].split()[:4] == ["recipe", "verdict", "exit", "seconds"]
    assert table.splitlines()[-1] == "4 recipes: 2 error, 1 fail, 1 pass; exit code 2"


def test_two_recipes_writing_one_folder_is_an_error(tmp_path, write_recipe):
    one = write_recipe(_recipe("same", output=str(tmp_path / "o")), "one.yaml")
    two = write_recipe(_recipe("same", output=str(tmp_path / "o")), "two.yaml")
    results = trtopt.compile_many([one, two])
    assert [r.exit_code for r in results] == [0, 2]
    assert "same output folder" in results[1].message


def test_cli_jobs_pool_prints_one_table_and_exits_with_the_worst(tmp_path, write_recipe):
    paths = [str(p) for p in _recipes(tmp_path, write_recipe)[:2]]
    result = run_cli("compile", *paths, "--jobs", "2", "-o", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("recipe") and len(lines) == 4
    assert lines[-1] == "2 recipes: 1 fail, 1 pass; exit code 1"
    assert (tmp_path / "out" / "good" / "report.json").is_file()
    again = run_cli("compile", *paths, "--jobs", "2", "-o", str(tmp_path / "out"))
    assert again.returncode == 1 and "pass (cached)" in again.stdout
