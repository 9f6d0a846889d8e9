"""What every backend provides: build an artifact from the final ONNX graph, and run it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from polygraphy.backend.base import BaseRunner


@dataclass
class BuildResult:
    """A built artifact: the file a deployment loads, and what the build learned."""

    backend: str
    artifact: Path
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    def build(self, model_path: Path, out_dir: Path) -> BuildResult:
        """Turn the optimized ONNX model into the artifact, writing only under ``out_dir``."""
        ...

    def runner(self, build: BuildResult) -> BaseRunner:
        """A Polygraphy runner for the artifact (raises BuildError where it cannot run here)."""
        ...
