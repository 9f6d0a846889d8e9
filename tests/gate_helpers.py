"""Helpers for the golden-file, check, diff and report tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import numpy_helper

import trtopt
from helpers import ROOT

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
FAST = ["check.samples=2", "check.latency_runs=5", "check.verify_passes=false"]


def shipped_recipes() -> list[Path]:
    """Every recipe under recipes/ (a file with neither `model` nor `extends` is a fragment)."""
    return [
        path
        for path in sorted((ROOT / "recipes").glob("*.yaml"))
        if {"model", "extends"} & set(yaml.safe_load(path.read_text()) or {})
    ]


def compile_quickstart(out: Path) -> trtopt.CompileResult:
    return trtopt.compile(QUICKSTART, output_dir=out, overrides=FAST, use_cache=False)


def perturb(model_path: Path, out_path: Path, scale: float = 1.05) -> Path:
    """A copy of ``model_path`` whose largest initializer is scaled: a deliberately wrong
    artifact with the same inputs and outputs."""
    model = onnx.load(str(model_path))
    largest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(largest)
    largest.CopyFrom(numpy_helper.from_array((values * scale).astype(values.dtype), largest.name))
    onnx.save(model, str(out_path))
    return out_path
