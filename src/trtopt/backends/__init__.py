"""Backends turn the final ONNX graph into a deployable artifact and run it."""

from __future__ import annotations

from typing import Any

from .base import Backend, BuildResult


def get_backend(name: str, options: dict[str, Any]) -> Backend:
    """The backend called ``name``, configured with its recipe options."""
    if name == "onnxruntime":
        from .onnxruntime import OnnxruntimeBackend

        return OnnxruntimeBackend(**options)
    raise ValueError(f"unknown backend '{name}'")


__all__ = ["Backend", "BuildResult", "get_backend"]
