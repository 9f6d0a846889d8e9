"""What every backend provides: build an artifact from the final ONNX graph, and run it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from polygraphy.backend.base import BaseRunner

ONNX_ARTIFACT = "model.onnx"
"""The final ONNX graph in an output folder: the artifact of the ONNX Runtime backend, and
what an engine was built from, beside it."""


@dataclass
class BuildResult:
    """A built artifact: the file a deployment loads, and what the build learned."""

    backend: str
    artifact: Path
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    """Other files the build wrote beside the artifact (build log, timing cache)."""


class Backend(Protocol):
    name: str

    def unavailable(self) -> str | None:
        """Why this backend cannot build here (its package is missing), or None."""
        ...

    def build(self, model_path: Path, out_dir: Path) -> BuildResult:
        """Turn the optimized ONNX model into the artifact, writing only under ``out_dir``."""
        ...

    def cannot_run(self, build: BuildResult) -> str | None:
        """Why the artifact cannot run on this machine (e.g. no GPU), or None."""
        ...

    def runner(self, build: BuildResult) -> BaseRunner:
        """A Polygraphy runner for the artifact (raises BuildError where it cannot run here)."""
        ...
