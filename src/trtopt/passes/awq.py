"""Activation-aware INT4 weight quantization (AWQ): the per-input-channel scale and per-block
clip ratios that make a matrix product's INT4 weights lose the least on calibration data.

The method is AWQ's (Lin et al., 2023) as ModelOpt 0.47 runs it on ONNX
(``modelopt/onnx/quantization/int4.py``):

- scale search (``awq_lite``): the rows of a weight W [K, N] are multiplied by
  s = mean|x|^a / mean|w|^(1-a) (mean|w| of each input channel, relative to its block's amax;
  s normalized by sqrt(max * min), clipped to [1e-4, 1e4]) and the activation divided by s
  before the product, for a in 0, 0.1, ..., 1; the a whose quantized product errs least wins.
  One scale serves every product that reads the same activation (one Mul in the graph);
- clip search (``awq_clip``): each block's range shrinks to r * amax, r in 1, 0.95, ..., 0.5,
  whichever gives that block's partial products the least error.

What differs from ModelOpt: a candidate's error is measured on every calibration row, not on
64 sampled tokens held in memory. The error of the product over rows x is
sum((x D)^2) = trace(D^T G D) with D the weight error and G = sum(x^T x), so G (K x K) is all
that the calibration keeps per activation, accumulated sample by sample. And s = 1 (plain
rounding to nearest) and r = 1 are always candidates: on the calibration data AWQ never errs
more than RTN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import blockwise

SCALE_RANGE = (1e-4, 1e4)
"""Bounds of a channel scale (ModelOpt's, from AutoAWQ)."""
TINY = 1e-6
"""Keeps a zero mean |w| or |x| from dividing by zero (AutoAWQ's damping)."""


@dataclass
class Statistics:
    """What AWQ needs of one activation, read as rows of K channels: sum(x^T x), sum|x| per
    channel and the number of rows (float64: sums over many rows)."""

    gram: np.ndarray
    abs_sum: np.ndarray
    rows: int = 0

    @classmethod
    def empty(cls, channels: int) -> Statistics:
        return cls(np.zeros((channels, channels)), np.zeros(channels))

    def add(self, array: np.ndarray) -> None:
        rows = np.asarray(array, np.float64).reshape(-1, self.abs_sum.size)
        self.gram += rows.T @ rows
        self.abs_sum += np.abs(rows).sum(axis=0)
        self.rows += rows.shape[0]


@dataclass
class Choice:
    """AWQ's result for the weights reading one activation."""

    scale: np.ndarray | None
    """Per input channel: weights' rows are multiplied by it, the activation divided (None:
    no scale beat s = 1)."""
    alpha: float | None
    clips: list[np.ndarray] = field(default_factory=list)
    """Per weight, the clip ratio of every block (the scale's shape)."""
    error: float = 0.0
    """Output error relative to the output, trace(D^T G D) / trace(W^T G W), over the group."""
    rtn_error: float = 0.0
    """The same for plain round-to-nearest."""


def search(
    weights: Sequence[np.ndarray],
    stats: Statistics,
    block_size: int,
    scale: bool = True,
    clip: bool = True,
    steps: int = 10,
    clip_min: float = 0.5,
) -> Choice:
    """The channel scale (``scale``: searched over ``steps`` + 1 exponents) and then the block
    clip ratios (``clip``: 1 down to ``clip_min`` by 0.05) for ``weights`` ([K, N] each,
    blocks along K) that read the activation of ``stats``: ModelOpt's awq_lite, awq_clip or
    both in turn (awq_full)."""
    gram = stats.gram
    energy = sum(_error(w, gram) for w in weights) or 1.0

    def error(column: np.ndarray, clips: Sequence[np.ndarray | None]) -> float:
        found = sum(
            _error(w - _rounded(w * column, block_size, ratio) / column, gram)
            for w, ratio in zip(weights, clips)
        )
        return found / energy

    ones = np.ones((gram.shape[0], 1))
    rtn = error(ones, [None] * len(weights))
    best = Choice(None, None, [np.ones(_scale_shape(w, block_size)) for w in weights], rtn, rtn)
    if scale and stats.rows:
        x_mean = stats.abs_sum / stats.rows
        w_mean = np.concatenate([_relative_magnitude(w, block_size) for w in weights], 1).mean(1)
        for alpha in np.linspace(0.0, 1.0, steps + 1):
            s = np.clip(x_mean**alpha / (w_mean ** (1 - alpha) + TINY), *SCALE_RANGE)
            s = s / np.sqrt(s.max() * s.min())
            found = error(s[:, None], [None] * len(weights))
            if found < best.error:
                best = Choice(s, float(alpha), best.clips, found, rtn)
    if clip:
        column = best.scale[:, None] if best.scale is not None else ones
        scaled_gram = gram / column / column.T  # the Gram matrix of x / s
        clips = [_clip_search(w * column, scaled_gram, block_size, clip_min) for w in weights]
        found = error(column, clips)
        if found < best.error:  # per-block choices ignore products across blocks: checked
            best = Choice(best.scale, best.alpha, clips, found, rtn)
    return best


def _error(difference: np.ndarray, gram: np.ndarray) -> float:
    """sum((x D)^2) over the calibration rows: trace(D^T G D)."""
    return float(np.sum((gram @ difference) * difference))


def _rounded(weight: np.ndarray, block_size: int, clip: np.ndarray | None = None) -> np.ndarray:
    values, scale = blockwise.quantize(weight, 0, block_size, np.float32, clip)
    return blockwise.dequantize(values, scale, 0, block_size).astype(np.float64)


def _scale_shape(weight: np.ndarray, block_size: int) -> tuple[int, int]:
    return -(-weight.shape[0] // block_size), weight.shape[1]


def _relative_magnitude(weight: np.ndarray, block_size: int) -> np.ndarray:
    """|w| relative to its block's amax ([K, N]): AWQ's per-channel weight magnitude."""
    amax = blockwise.block_amax(weight, 0, block_size)
    return np.abs(weight) / (blockwise.expand(amax, 0, block_size, weight.shape[0]) + TINY)


def _clip_search(
    weight: np.ndarray, gram: np.ndarray, block_size: int, clip_min: float
) -> np.ndarray:
    """The ratio per block (of r = 1, 0.95, ..., ``clip_min``) whose rounding errs least on the
    block's share of the product: d^T G_bb d for the block's rows b of every column."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = blocks * block_size
    block_gram = np.zeros((padded, padded))
    block_gram[:k, :k] = gram
    diagonal = np.stack(
        [block_gram[i : i + block_size, i : i + block_size] for i in range(0, padded, block_size)]
    )  # [blocks, B, B]
    ratios = np.arange(1.0, clip_min - 1e-9, -0.05)
    best_error = np.full((blocks, n), np.inf)
    best = np.ones((blocks, n))
    for ratio in ratios:
        clip = np.full((blocks, n), ratio)
        difference = np.zeros((padded, n))
        difference[:k] = weight - _rounded(weight, block_size, clip)
        per_block = difference.reshape(blocks, block_size, n)
        error = np.sum((diagonal @ per_block) * per_block, axis=1)  # [blocks, N]
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best = np.where(better, ratio, best)
    return best
