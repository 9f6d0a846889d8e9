"""Shared fixtures; plain helpers live in helpers.py."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

from helpers import DIMS, RANGES

# In CI the generated examples are the same on every run, so a verdict never depends on what
# the random search happened to reach; locally each run explores new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets an empty cache folder (stage cache and calibration ranges), so no
    test sees another's results or the user's cache."""
    monkeypatch.setenv("TRTOPT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def keep_sigterm():
    """main() installs a SIGTERM handler; give the test process its own back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture
def write_recipe(tmp_path: Path) -> Callable[..., Path]:
    """Write a recipe (YAML text or a dict) into tmp_path and return its path."""

    def write(content: str | dict, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text)
        return path

    return write


@pytest.fixture
def recipe_for() -> Callable[..., dict]:
    """A small, fast recipe for a committed model (as a dict to tweak)."""

    def make(model: Path, **overrides: object) -> dict:
        names = ("input_ids", "attention_mask") if "bert" in model.stem else ("pixel_values",)
        # Only dims the model names: a recipe's check.dims must name the model's dims.
        dims = {k: v for k, v in DIMS.items() if k != "sequence" or "bert" in model.stem}
        recipe = {
            "name": model.stem,
            "model": str(model),
            "inputs": {name: {"range": list(RANGES[name])} for name in names},
            "passes": ["cleanup", "fold-constants", "infer-shapes", "cleanup"],
            "check": {"samples": 2, "dims": dims, "latency_runs": 2, "verify_passes": True},
        }
        recipe.update(overrides)
        return recipe

    return make


@pytest.fixture
def hallway(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The recipes a test's compiles took down the pipeline (one served from its direct entry
    is not listed)."""
    from trtopt import pipeline  # with the fixture: the hallway loads ONNX Runtime

    calls: list[str] = []
    full_way = pipeline.compile

    def counted(recipe, *args, **kwargs):
        calls.append(str(recipe))
        return full_way(recipe, *args, **kwargs)

    monkeypatch.setattr(pipeline, "compile", counted)
    return calls
