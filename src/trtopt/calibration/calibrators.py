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

from typing import Literal, get_args

import numpy as np

Calibrator = Literal["minmax", "percentile", "entropy", "mse"]
"""The calibrators by name: the one list (options type their choice with it)."""
CALIBRATORS: tuple[str, ...] = get_args(Calibrator)

ALGORITHM_VERSION = 3
"""Bumped whenever a calibrator's result can change: part of the range cache key."""
DEFAULT_BINS = 2048
"""Histogram resolution; TensorRT's entropy calibration uses 2048 bins."""
KL_EPS = 1e-4
"""Q's value on a bin where P has mass and Q has none (TensorRT's and MXNet's smoothing)."""
KL_TIE = 1e-12
"""Relative tolerance under which two thresholds' divergences count as equal."""


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
        # One float32 copy (|x|), scaled in place below: this runs for every tensor of every
        # batch, so it avoids the temporaries of a mask and a filtered copy unless the batch
        # holds non-finite values.
        values = np.abs(np.asarray(array, dtype=np.float32).ravel())
        if values.size == 0:
            return
        amax = float(values.max())
        if not np.isfinite(amax):
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
        values *= self.bins / self.top
        index = values.astype(np.intp)
        np.minimum(index, self.bins - 1, out=index)
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
    kl = entropy_divergences(counts, stop, levels)
    # The first threshold of the smallest divergence, as the reference loop's strict `<`
    # picks it; divergences equal in exact arithmetic (a plateau) differ here only by float
    # rounding of the sums, hence the relative tolerance.
    best = float(kl.min())
    first = int(np.flatnonzero(kl <= best + KL_TIE * max(1.0, abs(best)))[0])
    return float(min(hist.edges[levels + first], hist.amax))


def entropy_divergences(counts: np.ndarray, stop: int, levels: int) -> np.ndarray:
    """KL(P || Q) for every threshold i in [levels, stop] (in bins), as TensorRT defines P
    and Q, all at once from prefix sums of the histogram.

    TensorRT's reference loop builds P and Q bin by bin for each of up to ~1900 candidate
    thresholds (O(bins^2) per tensor, ~0.2 s even vectorized over candidates). Written per
    group instead, every term is a difference of prefix sums: for threshold i,

    - P is the histogram clipped at i with the outliers (mass at or beyond i) added to bin
      i-1; it sums to the total count T for every i, so p = P / T;
    - Q splits bins [0, i) into ``levels`` groups of i // levels bins (the remainder joins
      the last group) and spreads each group's mass m over its s occupied bins; it sums to
      the mass below i, B, so on an occupied bin of a group q = m / (s * B); bins where P has
      mass and Q has none (only bin i-1, when it is empty but outliers land on it) get the
      smoothing value 1e-4, as TensorRT and MXNet do;
    - KL = sum p log p - sum p log q, where sum P log P is a prefix sum of c log c plus the
      last bin's own term, and sum P log q is, per group, P's mass on the group's occupied
      bins times the group's log q.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = float(counts.sum())
    thresholds = np.arange(levels, stop + 1)
    occupied = counts > 0
    safe = np.where(occupied, counts, 1.0)
    mass_cum = np.concatenate([[0.0], np.cumsum(counts)])
    occupied_cum = np.concatenate([[0], np.cumsum(occupied)])
    clogc_cum = np.concatenate([[0.0], np.cumsum(counts * np.log(safe))])
    last = counts[thresholds - 1]
    below = mass_cum[thresholds]
    tail = total - below
    p_last = last + tail
    plogp = clogc_cum[thresholds - 1] + p_last * np.log(np.where(p_last > 0, p_last, 1.0))
    width = thresholds // levels
    group = np.arange(levels)
    starts = group[None, :] * width[:, None]
    ends = np.where(group[None, :] == levels - 1, thresholds[:, None], starts + width[:, None])
    mass = mass_cum[ends] - mass_cum[starts]
    support = occupied_cum[ends] - occupied_cum[starts]
    # P's mass on each group's occupied bins: the group's own mass, plus the outliers on the
    # last group when bin i-1 is occupied (else they sit on an empty bin: the eps term).
    p_mass = mass.copy()
    p_mass[:, -1] += np.where(last > 0, tail, 0.0)
    q = mass / np.maximum(support, 1) / np.where(below > 0, below, 1.0)[:, None]
    plogq = (p_mass * np.log(np.where(mass > 0, q, 1.0))).sum(axis=1)
    plogq += np.where((last == 0) & (tail > 0), tail * np.log(KL_EPS), 0.0)
    return (plogp - plogq) / total - np.log(total)


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
