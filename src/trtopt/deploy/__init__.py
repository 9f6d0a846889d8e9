"""Deploying a compile's artifact: a Triton Inference Server model repository entry."""

from __future__ import annotations

from .triton import TritonConfig, TritonModel, TritonTensor, model_config, write_model_repository

__all__ = [
    "TritonConfig",
    "TritonModel",
    "TritonTensor",
    "model_config",
    "write_model_repository",
]
