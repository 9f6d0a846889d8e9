"""Backends turn the final ONNX graph into a deployable artifact and run it."""

from __future__ import annotations

from typing import Any

from .base import ONNX_ARTIFACT, Backend, BuildResult
from .profiles import Profiles


def get_backend(name: str, options: dict[str, Any], profiles: Profiles | None = None) -> Backend:
    """The backend called ``name``, configured with its recipe options (and, for TensorRT, the
    optimization profiles). Creating one imports no optional package."""
    if name == "onnxruntime":
        from .onnxruntime import OnnxruntimeBackend

        return OnnxruntimeBackend(**options)
    if name in ("tensorrt", "tensorrt-rtx"):
        from .tensorrt import TensorrtBackend

        return TensorrtBackend(name, options, profiles)
    raise ValueError(f"unknown backend '{name}'")


__all__ = ["ONNX_ARTIFACT", "Backend", "BuildResult", "get_backend"]
