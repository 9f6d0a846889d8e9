"""The embedded ONNX Runtime CPU backend: always available, and the reference for checks."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import onnx
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


LOAD_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in ("Fail", "NotImplemented", "InvalidGraph", "InvalidArgument", "InvalidProtobuf")
)
"""What ONNX Runtime raises when it refuses a model (not an internal failure of its own)."""


def why_refused(model: onnx.ModelProto, error: Exception) -> str:
    """Why ONNX Runtime refuses ``model``, in a user's words: the opset, op, domain or node
    names it cannot take, else its own message without the status prefix."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(error))
    text = re.sub(r"^Load model from .*? failed:\s*", "", text, flags=re.S).strip()
    imports = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    if match := re.search(
        r"Opset (\d+) is under development.*domain (\S+) is till opset (\d+)", text, re.S
    ):
        return (
            f"the model imports opset {match[1]} of {match[2]}, which ONNX Runtime does not "
            f"support (it supports up to opset {match[3]})"
        )
    if match := re.search(r"implementation for (\w+)\((\d+)\) node with name '([^']*)'", text):
        return (
            f"ONNX Runtime has no implementation of {match[1]} at opset {match[2]} (node "
            f"'{match[3]}'; the model imports {imports}): convert the model to a newer opset, "
            "e.g. with onnx.version_converter"
        )
    if match := re.search(r"([\w.]*):(\w+)\(-?\d+\) is not a registered function/op", text):
        nodes = [n.name for n in model.graph.node if (n.domain, n.op_type) == match.groups()]
        return (
            f"op {match[2]} of domain '{match[1]}' (node {', '.join(map(repr, nodes[:5]))}) is "
            "unknown to ONNX Runtime: a custom op whose library is not loaded, or a wrong domain"
        )
    counts = Counter(node.name for node in model.graph.node if node.name)
    if twice := sorted(name for name, count in counts.items() if count > 1):
        return (
            "node names must be unique for ONNX Runtime; used more than once: "
            + ", ".join(map(repr, twice[:10]))
            + (f" and {len(twice) - 10} more" if len(twice) > 10 else "")
        )
    return f"ONNX Runtime cannot load the model: {text.splitlines()[0] if text else error}"


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
