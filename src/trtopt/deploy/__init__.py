"""Deploying a compile's artifact: a Triton Inference Server model repository entry, and
monitoring the deployed model's drift from its reference on captured inputs (the function is
``trtopt.monitor``, from ``trtopt.deploy.monitor``: the name here stays the module's)."""

from __future__ import annotations

from .monitor import MonitorResult
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
    "MonitorResult",
    "TritonConfig",
    "TritonModel",
    "TritonTensor",
    "deploy_to_triton",
    "model_config",
    "triton_place",
    "write_model_repository",
]
