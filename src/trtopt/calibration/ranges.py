"""Calibration: the ranges (amax per tensor) of chosen tensors on a data set, streamed
through ONNX Runtime, by a calibrator, cached by model, data and settings."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .._version import __version__
from .cache import cache_key, current_folder, load_ranges, save_ranges
from .calibrators import ALGORITHM_VERSION, DEFAULT_BINS, AbsHistogram, compute_amax
from .collect import COLLECT_VERSION, DEFAULT_MEMORY_BUDGET, collect
from .sources import DataSet

log = logging.getLogger("trtopt.calibration")


@dataclass
class CalibrationResult:
    """Ranges (amax per tensor) and how they were obtained."""

    ranges: dict[str, float]
    cached: bool
    feeds: int = 0
    cache_file: Path | None = None
    settings: dict = field(default_factory=dict)


def model_digest(model: onnx.ModelProto, weights: Mapping[str, np.ndarray] | None = None) -> str:
    """sha256 of a model's graph, opsets and weights, hashed piece by piece (serializing the
    whole model at once would hold a second copy of its weights). ``weights``: the values of
    graph inputs that stand for weights (see ``split``)."""
    digest = hashlib.sha256()
    for opset in model.opset_import:
        digest.update(opset.SerializeToString(deterministic=True))
    graph = model.graph
    for part in (graph.node, graph.input, graph.output, graph.initializer):
        for item in part:
            digest.update(item.SerializeToString(deterministic=True))
    for name in sorted(weights or {}):
        array = np.ascontiguousarray(weights[name])  # type: ignore[index]
        digest.update(repr((name, str(array.dtype), array.shape)).encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def calibrate(
    model: onnx.ModelProto,
    data: DataSet,
    tensors: Sequence[str],
    calibrator: str = "entropy",
    percentile: float = 99.99,
    bins: int = DEFAULT_BINS,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    use_cache: bool = True,
    cache_dir: Path | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
) -> CalibrationResult:
    """Ranges of ``tensors`` on ``data`` by ``calibrator``, streamed, cached on disk.
    ``weights``: the values of ``model``'s graph inputs that stand for its weights (a model
    from ``split`` or ``split_graph``). ``cache_dir``: the range files' folder; default: the
    one the enclosing compile names (:func:`ranges_cache`), none outside a compile."""
    found = calibrate_each(
        model, data, tensors, [calibrator], percentile, bins, memory_budget, use_cache, cache_dir,
        weights,
    )  # fmt: skip
    return found[calibrator]


def calibrate_each(
    model: onnx.ModelProto,
    data: DataSet,
    tensors: Sequence[str],
    calibrators: Sequence[str],
    percentile: float = 99.99,
    bins: int = DEFAULT_BINS,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    use_cache: bool = True,
    cache_dir: Path | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
) -> dict[str, CalibrationResult]:
    """``calibrate`` by each of ``calibrators``, from one streaming collection of histograms
    (each calibrator reads the same histogram its own way), each cached on its own."""
    folder = (cache_dir if cache_dir is not None else current_folder()) if use_cache else None
    digest = model_digest(model, weights) if folder is not None else ""
    results: dict[str, CalibrationResult] = {}
    missing: dict[str, tuple[str | None, dict]] = {}
    for calibrator in calibrators:
        settings = {
            # Versions too: a cache must not outlive a change in the code that produced it.
            "algorithm": ALGORITHM_VERSION,
            "collect": COLLECT_VERSION,
            "trtopt": __version__,
            "onnxruntime": ort.__version__,
            "calibrator": calibrator,
            "percentile": percentile if calibrator == "percentile" else None,
            "bins": bins,
            "tensors": sorted(tensors),
        }
        key = None
        if folder is not None:
            key = cache_key(digest, data.fingerprint(), settings)
            cached = load_ranges(key, folder)
            if cached is not None and set(cached) >= set(tensors):
                log.info("calibration ranges (%s) from the cache", calibrator)
                results[calibrator] = CalibrationResult(cached, cached=True, settings=settings)
                continue
        missing[calibrator] = (key, settings)
    if missing:
        histograms = {name: AbsHistogram(bins) for name in tensors}

        def observe(name: str, array) -> None:
            histograms[name].update(array)

        count = collect(model, data, list(tensors), observe, memory_budget, weights=weights)
        for calibrator, (key, settings) in missing.items():
            ranges = {
                name: compute_amax(hist, calibrator, percentile)
                for name, hist in histograms.items()
            }
            path = save_ranges(key, ranges, folder) if key and folder is not None else None
            results[calibrator] = CalibrationResult(
                ranges, cached=False, feeds=count, cache_file=path, settings=settings
            )
    return {calibrator: results[calibrator] for calibrator in calibrators}
