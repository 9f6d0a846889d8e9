"""Helpers shared by the tests: the committed exported models, ORT runs, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from trtopt import feeds

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "models"
EXPORTED = sorted(MODELS.glob("*.onnx"))
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
QUICKSTART_MODEL = ROOT / "recipes" / "models" / "quickstart.onnx"

# Synthetic value ranges that are valid for the committed models (BERT's vocabulary is 100).
RANGES = {"input_ids": (0, 99), "attention_mask": (0, 1), "pixel_values": (0.0, 1.0)}
DIMS = {"batch": 2, "sequence": 8}


def model_feeds(model: onnx.ModelProto, samples: int = 2, seed: int = 0) -> list[feeds.Feed]:
    infos = feeds.model_inputs(model)
    ranges = {i.name: RANGES[i.name] for i in infos if i.name in RANGES}
    return feeds.synthetic_feeds(infos, samples, seed, DIMS, ranges)


def ort_run(model: onnx.ModelProto | Path, data: list[feeds.Feed]) -> list[list[np.ndarray]]:
    """Outputs of ``model`` on every feed, with ONNX Runtime's own graph optimizations off so
    that what is compared is what the graph computes."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in data]


def assert_same_outputs(a: list[list[np.ndarray]], b: list[list[np.ndarray]], atol=1e-5) -> None:
    assert len(a) == len(b)
    for outs_a, outs_b in zip(a, b, strict=True):
        assert len(outs_a) == len(outs_b)
        for x, y in zip(outs_a, outs_b, strict=True):
            assert x.shape == y.shape
            np.testing.assert_allclose(x, y, atol=atol, rtol=1e-4)


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m trtopt ARGS` in a subprocess, as a user's shell would."""
    return subprocess.run(
        [sys.executable, "-m", "trtopt", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
        timeout=300,
    )


def hostile_recipe(tmp_path: Path, **changes: object) -> Path:
    """A one-sample quickstart recipe with ``changes``, written as tmp_path/recipe.yaml (as
    JSON, which YAML reads): the base the hostile-input tests break one thing of."""
    recipe = {
        "name": "hostile",
        "model": str(QUICKSTART_MODEL),
        "inputs": {"pixel_values": {"range": [0.0, 1.0]}},
        "passes": ["cleanup"],
        "check": {"samples": 1, "dims": {"batch": 1}, "latency_runs": 0},
        "output": str(tmp_path / "out"),
        **changes,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    return path


NOOP_PLUGIN = """
from trtopt import Pass, register_pass


@register_pass("noop")
class Noop(Pass):
    \"\"\"Change nothing.\"\"\"

    def run(self, graph, ctx):
        return graph
"""
"""A plugin file's text: one pass that changes nothing."""
