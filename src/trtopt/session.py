"""ONNX Runtime and Polygraphy plumbing: the reference run, and the runner that
checks an artifact (the ONNX graph it was built from, where the artifact cannot run here)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner

from . import accuracy, emulation
from .backends import Backend, BuildResult
from .backends import onnxruntime as ort_backend
from .backends.onnxruntime import session_loader
from .calibration import split_graph
from .errors import ModelError
from .feeds import Feed
from .graph_io import import_graph
from .model import load_model

if TYPE_CHECKING:
    import onnxruntime as ort

ARTIFACT_CHECKED = "artifact"
GRAPH_CHECKED = "final ONNX graph on ONNX Runtime"
EMULATED_CHECKED = f"{GRAPH_CHECKED}, its FP16/BF16 rounded as TensorRT rounds it"
"""What a check ran: the artifact itself, or the graph it was built from (for a TensorRT
engine, with its reduced precision emulated: trtopt.emulation.LIMITS says what that shows)."""


class Reference:
    """The original model on ONNX Runtime (CPU unless ``options`` say otherwise): its feeds,
    its outputs on them, a runner, and the execution providers it ran on.

    ``options``: a recipe's `calibration` section as plain data (``providers``, ``fallback``,
    ``cuda``), keyword arguments of ``session_loader``; a provider missing here raises
    ProviderUnavailableError (a BackendOptionError) unless ``fallback``."""

    def __init__(
        self, model_path: Path, data: list[Feed], options: Mapping[str, Any] | None = None
    ) -> None:
        loader = session_loader(model_path, **(options or {}))
        try:  # a model ONNX Runtime refuses (an opset, op or domain it lacks) is the user's
            session = loader()
        except ort_backend.load_errors() as error:
            model = onnx.load(str(model_path), load_external_data=False)
            raise ModelError(ort_backend.why_refused(model, error), str(model_path)) from None
        self.feeds = data
        self.providers: list[str] = session.get_providers()
        """The ONNX Runtime execution providers the reference session registered."""
        self.outputs = accuracy.run(OnnxrtRunner(session, name="reference"), data)
        del session  # a large model's session is not held while the passes run
        self.runner = OnnxrtRunner(loader, name="reference")


def artifact_runner(
    backend: Backend, build: BuildResult, graph: Path, unavailable: str | None = None
) -> tuple[BaseRunner, str | None]:
    """A runner for ``build``'s artifact, and None; or, where it cannot run here (its backend
    is ``unavailable``, or it needs a GPU), one for ``graph``, the ONNX graph it was built
    from, and why."""
    reason = unavailable or backend.unavailable() or backend.cannot_run(build)
    if reason is None:
        return backend.runner(build), None
    return graph_runner(graph, emulate=emulates(backend.name)), reason


def graph_runner(graph: Path, emulate: bool) -> OnnxrtRunner:
    """A runner for ``graph`` standing in for the artifact built from it. ``emulate`` (a
    TensorRT engine's graph): its FP16/BF16 rounding is emulated (``emulation.session``), as
    ONNX Runtime's CPU computes most FP16 ops in FP32 and drops their Casts, which would show
    little of the error the engine has; not for timing (its sessions run unoptimized)."""
    if not emulate:
        return OnnxrtRunner(session_loader(graph), name="artifact")

    def load() -> ort.InferenceSession:
        proto = load_model(graph, external_data=False)
        model, weights = split_graph(import_graph(proto, graph.parent), external=True)
        return emulation.session(model, weights=weights)

    return OnnxrtRunner(load, name="artifact")


def emulates(backend: str) -> bool:
    """Whether the graph standing in for ``backend``'s artifact runs with its FP16/BF16
    rounding emulated: a TensorRT engine's does; ONNX Runtime's artifact is the graph."""
    return backend != "onnxruntime"


def checked(reason: str | None, backend: str) -> str:
    """What a check of ``backend``'s artifact ran, given why the artifact could not run (None:
    it ran)."""
    if reason is None:
        return ARTIFACT_CHECKED
    return EMULATED_CHECKED if emulates(backend) else GRAPH_CHECKED
