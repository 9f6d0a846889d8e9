"""The embedded ONNX Runtime CPU backend: always available, and the reference for checks."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
from polygraphy.backend.onnxrt import OnnxrtRunner

from ..errors import BuildError
from .base import BuildResult

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_loader(
    model_path: Path,
    graph_optimization_level: str = "all",
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
) -> Callable[[], ort.InferenceSession]:
    """A lazy CPU session factory, the callable Polygraphy's OnnxrtRunner accepts.

    Written here rather than with Polygraphy's SessionFromOnnx because that loader exposes no
    thread counts, which latency comparisons need to pin.
    """

    def load() -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = OPTIMIZATION_LEVELS[graph_optimization_level]
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.log_severity_level = 3
        return ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    return load


class OnnxruntimeBackend:
    """The artifact is the optimized ONNX model; building proves ONNX Runtime can plan it."""

    name = "onnxruntime"

    def __init__(
        self,
        graph_optimization_level: str = "all",
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
    ) -> None:
        self.graph_optimization_level = graph_optimization_level
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads

    def unavailable(self) -> str | None:
        return None  # a dependency of trtopt itself

    def cannot_run(self, build: BuildResult) -> str | None:
        return None

    def _loader(self, model_path: Path) -> Callable[[], ort.InferenceSession]:
        return session_loader(
            model_path, self.graph_optimization_level, self.intra_op_threads, self.inter_op_threads
        )

    def build(self, model_path: Path, out_dir: Path) -> BuildResult:
        start = time.perf_counter()
        try:
            self._loader(model_path)()
        except Exception as error:  # ORT raises its own exception types for every load failure
            raise BuildError(f"ONNX Runtime cannot load the optimized model: {error}") from error
        return BuildResult(
            backend=self.name,
            artifact=model_path,
            seconds=time.perf_counter() - start,
            details={
                "onnxruntime_version": ort.__version__,
                "graph_optimization_level": self.graph_optimization_level,
                "intra_op_threads": self.intra_op_threads,
                "inter_op_threads": self.inter_op_threads,
            },
        )

    def runner(self, build: BuildResult) -> OnnxrtRunner:
        return OnnxrtRunner(self._loader(build.artifact), name="artifact")
