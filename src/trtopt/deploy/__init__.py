"""Deploying a compile's artifact: a Triton Inference Server model repository entry."""

from __future__ import annotations

from .triton import (
    TritonConfig,
    TritonModel,
    TritonTensor,
    deploy_to_triton,
    model_config,
    triton_place,
    write_model_repository,
)

__all__ = [
    "TritonConfig",
    "TritonModel",
    "TritonTensor",
    "deploy_to_triton",
    "model_config",
    "triton_place",
    "write_model_repository",
]
