"""Calibrators: the range (amax) of each tensor for symmetric INT8, from streamed histograms.

Every calibrator works from one streaming histogram of |x| per tensor (``AbsHistogram``),
updated batch by batch: memory per tensor is ``bins`` counters however much data flows. The
histogram covers [0, top); when a batch exceeds ``top`` it doubles (as often as needed) and
merges neighbouring bins, which keeps the counts exact without a second pass over the data.

- ``minmax``: amax = the largest |x| seen.
- ``percentile``: amax = the given percentile of |x| (default 99.99).
- ``entropy``: TensorRT's entropy calibration (IInt8EntropyCalibrator2's algorithm, as
  published in "8-bit Inference with TensorRT", GTC 2017, and in NVIDIA's
  pytorch-quantization ``_compute_amax_entropy``): over candidate thresholds i >= 128 bins,
  the reference distribution P is the histogram clipped at i with the outliers added to its
  last bin, Q is P merged into 128 levels and expanded back over P's non-zero bins, and
  amax is the threshold of the smallest KL(P || Q).
- ``mse``: amax minimizing the expected squared error of quantize-dequantize over the
  histogram (bin centres as the values): clipping error beyond amax plus rounding error.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Calibrator = Literal["minmax", "percentile", "entropy", "mse"]
CALIBRATORS: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse")

ALGORITHM_VERSION = 2
"""Bumped whenever a calibrator's result can change: part of the range cache key."""
DEFAULT_BINS = 2048
"""Histogram resolution; TensorRT's entropy calibration uses 2048 bins."""
INT8_LEVELS = 128
"""Quantization levels of a symmetric INT8 range on one side (2**(8-1))."""
_ENTROPY_STRIDE = 1


class AbsHistogram:
    """A streaming histogram of |x| over [0, top) with exactly mergeable bins."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if bins & (bins - 1):
            raise ValueError("bins must be a power of two")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.top = 0.0
        self.amax = 0.0
        self.total = 0

    def update(self, array: np.ndarray) -> None:
        values = np.abs(np.asarray(array, dtype=np.float32).ravel())
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        amax = float(values.max())
        self.amax = max(self.amax, amax)
        self.total += values.size
        if amax <= 0.0:
            self.counts[0] += values.size
            return
        if self.top == 0.0:
            self.top = amax * (1.0 + 1e-6)
        while amax >= self.top:
            # Double the range: bin i of the new histogram holds old bins 2i and 2i+1.
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.concatenate([merged, np.zeros(self.bins // 2, dtype=np.int64)])
            self.top *= 2.0
        index = np.minimum((values * (self.bins / self.top)).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(index, minlength=self.bins)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.top, self.bins + 1)


def compute_amax(
    hist: AbsHistogram, calibrator: str, percentile: float = 99.99, num_bits: int = 8
) -> float:
    """The range of a tensor by ``calibrator`` from its histogram (0 for an all-zero tensor)."""
    if hist.amax <= 0.0 or hist.total == 0:
        return 0.0
    if calibrator == "minmax":
        return hist.amax
    if calibrator == "percentile":
        return _percentile(hist, percentile)
    if calibrator == "entropy":
        return _entropy(hist, num_bits)
    if calibrator == "mse":
        return _mse(hist, num_bits)
    raise ValueError(f"unknown calibrator {calibrator!r}")


def _percentile(hist: AbsHistogram, percentile: float) -> float:
    cdf = np.cumsum(hist.counts) / hist.total
    index = int(np.searchsorted(cdf, percentile / 100.0))
    index = min(index, hist.bins - 1)
    return float(min(hist.edges[index + 1], hist.amax))


def _entropy(hist: AbsHistogram, num_bits: int) -> float:
    levels = 1 << (num_bits - 1)
    counts = hist.counts.astype(np.float64)
    # As TensorRT does (and pytorch-quantization after it): the first bin takes its
    # neighbour's count, or the spike of exact zeros after a ReLU dominates the divergence
    # and drives the threshold far too low.
    counts[0] = counts[1]
    if not counts.any():
        return hist.amax
    last = int(np.nonzero(counts)[0][-1]) + 1
    # Thresholds beyond the last occupied bin clip nothing and only coarsen Q: stop there.
    stop = max(min(hist.bins, last), levels)
    candidates = np.arange(levels, stop + 1, _ENTROPY_STRIDE)
    best_i, best_kl = int(stop), np.inf
    # Vectorized over candidate thresholds in chunks (rows = candidates, columns = bins),
    # where a loop per candidate, as the reference implementations write it, costs ~0.5 s
    # per tensor.
    for chunk in np.array_split(candidates, max(1, len(candidates) // 256)):
        kl = _entropy_kl(counts, chunk, levels)
        index = int(np.argmin(kl))
        if kl[index] < best_kl:
            best_kl, best_i = float(kl[index]), int(chunk[index])
    return float(min(hist.edges[best_i], hist.amax))


def _entropy_kl(counts: np.ndarray, thresholds: np.ndarray, levels: int) -> np.ndarray:
    """KL(P || Q) for each threshold i (in bins), as TensorRT defines P and Q."""
    width = int(thresholds.max())
    rows = np.arange(len(thresholds))[:, None]
    j = np.arange(width)[None, :]
    inside = j < thresholds[:, None]
    base = np.where(inside, counts[None, :width], 0.0)
    tail = counts.sum() - base.sum(axis=1)
    # P: the histogram clipped at i, the outliers added to its last bin.
    p = base.copy()
    p[rows[:, 0], thresholds - 1] += tail
    # Q: i bins merged into `levels` groups of i // levels bins (the remainder joins the last
    # group), each group's mass spread evenly over its non-zero bins.
    group = np.minimum(j // (thresholds[:, None] // levels), levels - 1)
    flat = (rows * levels + group)[inside]
    mass = np.bincount(flat, weights=base[inside], minlength=len(thresholds) * levels)
    nonzero = (base > 0) & inside
    support = np.bincount(flat, weights=nonzero[inside], minlength=len(thresholds) * levels)
    index = rows * levels + group
    q = np.where(nonzero, mass[index] / np.maximum(support[index], 1.0), 0.0)
    p = p / p.sum(axis=1, keepdims=True)
    q = q / np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
    # Smoothing: bins where P has mass and Q has none get eps (TensorRT and MXNet: 1e-4).
    q = np.where((p > 0) & (q == 0), 1e-4, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return terms.sum(axis=1)


def _mse(hist: AbsHistogram, num_bits: int) -> float:
    levels = (1 << (num_bits - 1)) - 1
    counts = hist.counts.astype(np.float64)
    centers = (hist.edges[:-1] + hist.edges[1:]) / 2
    occupied = counts > 0
    values, weights = centers[occupied], counts[occupied]
    candidates = hist.edges[1:][hist.bins // 16 :: 4]
    candidates = np.unique(np.append(candidates[candidates <= hist.amax * 1.0001], hist.amax))
    best, best_error = hist.amax, np.inf
    for amax in candidates:
        scale = amax / levels
        dequantized = np.clip(np.round(values / scale), -levels, levels) * scale
        error = float(np.sum(weights * (values - dequantized) ** 2))
        if error < best_error:
            best, best_error = float(amax), error
    return best
