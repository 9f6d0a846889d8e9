"""The command line loads only what a verb needs (issue 15): checking a recipe reads pass
options, not graphs, and a compile served from the cache runs no session. Asserted on the
modules a fresh process imports, never on timings (those are benchmarks/startup.py's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import QUICKSTART, ROOT

LOADED = """
import json, linecache, sys
from trtopt.cli import main
code = main(sys.argv[1:])
modules = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"code": code, "modules": modules, "sources": sorted(linecache.cache)}))
"""
"""Runs trtopt's command line and prints its exit code, the top-level packages loaded and the
source files read as text (``linecache``: what ``inspect`` and docstring readers go through)."""


def _run(*args: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", LOADED, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, done.stderr
    return result


def _loaded(*args: str, env: dict[str, str] | None = None) -> set[str]:
    return set(_run(*args, env=env)["modules"])


def test_validate_loads_no_graph_library():
    loaded = _loaded("validate", str(QUICKSTART))
    heavy = {"numpy", "onnx", "onnx_graphsurgeon", "ml_dtypes", "onnxruntime", "polygraphy"}
    assert not loaded & heavy


def test_validate_reads_no_option_docstrings():
    """Option docs are read from the source for `trtopt passes` and the schema only; pydantic's
    use_attribute_docstrings read every options class's source as the class was made."""
    assert _run("validate", str(QUICKSTART))["sources"] == []
    assert any(s.endswith("recipe.py") for s in _run("schema")["sources"])


def test_an_unchanged_recipe_is_served_without_loading_the_model_or_its_libraries(
    tmp_path: Path,
):
    env = {**os.environ, "TRTOPT_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "out"
    command = ["compile", str(QUICKSTART), "-o", str(out), "--quiet"]
    subprocess.run([sys.executable, "-m", "trtopt", *command], cwd=ROOT, env=env, check=True)
    loaded = _loaded(*command, env=env)
    assert json.loads((out / "report.json").read_text())["cache"]["compile"] == "hit"
    heavy = {"numpy", "onnx", "onnxruntime", "polygraphy", "pydantic", "matplotlib", "torch"}
    assert not loaded & heavy
