"""Calibration: data sources, streaming statistics, calibrators and range caches."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "cache": ("RANGES_FOLDER", "ranges_cache", "tensorrt_cache"),
    "calibrators": ("CALIBRATORS", "AbsHistogram", "compute_amax"),
    # Not `collect` itself: the function shares its module's name, which importing the module
    # would put in its place here. Import it from trtopt.calibration.collect.
    "collect": ("split", "split_graph"),
    "ranges": ("CalibrationResult", "calibrate", "calibrate_each", "model_digest"),
    "source_specs": ("DataSource", "ImageSource", "SyntheticSource"),
    "sources": ("DataSet",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """Each name loads its module when first used (PEP 562): a recipe's data-source schema
    needs pydantic, not ONNX Runtime."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module '{__name__}' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .cache import RANGES_FOLDER, ranges_cache, tensorrt_cache
    from .calibrators import CALIBRATORS, AbsHistogram, compute_amax
    from .collect import split, split_graph
    from .ranges import CalibrationResult, calibrate, calibrate_each, model_digest
    from .source_specs import DataSource, ImageSource, SyntheticSource
    from .sources import DataSet
