"""Block-wise symmetric INT4 weights, as DequantizeLinear (opset 21) reads them.

A 2-D weight is cut into blocks of ``block_size`` consecutive values along ``axis`` (the
reduction axis K of the matrix product, so that each scale multiplies one partial dot
product); each block gets one scale, amax / 7 (optionally times a clip ratio < 1), and its
values round to the nearest integer in [-7, 7] (TensorRT's symmetric narrow range, no zero
point). DequantizeLinear-21 computes ``q * scale`` with the scale repeated ``block_size`` times
along ``axis``; its scale has the weight's shape with ``ceil(K / block_size)`` on ``axis``.
"""

from __future__ import annotations

import ml_dtypes  # onnx's own dependency: the numpy type of INT4
import numpy as np
import onnx

INT4_MAX = 7
"""Symmetric INT4: values in [-7, 7], scale = amax / 7 (TensorRT, ModelOpt's INT4_SCALE)."""


class Int4Array(np.ndarray):
    """INT4 values (``ml_dtypes.int4``, one per byte in memory) whose ``tobytes`` packs two
    per byte, low nibble first, as ONNX stores INT4: graphsurgeon (0.6) exports a constant's
    ``values.tobytes()`` as its raw data, which for INT4 would otherwise be twice too long."""

    def tobytes(self, order: str = "C") -> bytes:  # type: ignore[override]
        return onnx.numpy_helper.from_array(np.asarray(self), "int4").raw_data


def to_int4(scaled: np.ndarray) -> np.ndarray:
    """Weights already divided by their scale, rounded to nearest even and saturated to
    [-7, 7] (an :class:`Int4Array`)."""
    values = np.clip(np.rint(scaled), -INT4_MAX, INT4_MAX).astype(ml_dtypes.int4)
    return np.ascontiguousarray(values).view(Int4Array)


def block_amax(weight: np.ndarray, axis: int, block_size: int) -> np.ndarray:
    """|max| of every block: the weight's shape with ``ceil(K / block_size)`` on ``axis`` (a
    last, shorter block is reduced over the values it has, as the spec pads it)."""
    moved = np.moveaxis(np.abs(weight), axis, 0)
    blocks = -(-moved.shape[0] // block_size)
    padded = np.zeros((blocks * block_size, *moved.shape[1:]), moved.dtype)
    padded[: moved.shape[0]] = moved
    amax = padded.reshape(blocks, block_size, *moved.shape[1:]).max(axis=1)
    return np.moveaxis(amax, 0, axis)


def expand(scale: np.ndarray, axis: int, block_size: int, length: int) -> np.ndarray:
    """Per-block values repeated to every element of their block (``length`` along ``axis``),
    as DequantizeLinear-21 broadcasts its scale."""
    return np.repeat(scale, block_size, axis=axis).take(np.arange(length), axis=axis)


def quantize(
    weight: np.ndarray,
    axis: int,
    block_size: int,
    dtype: np.dtype | type = np.float32,
    clip: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """INT4 values (an :class:`Int4Array`) and scales of type ``dtype`` (the graph's float
    type). ``clip``: a ratio per block (scale shape) that shrinks the range below amax; values
    beyond it saturate at +-7. The values are rounded against the scale as stored, so that
    dequantizing the stored pair is within half a step of the weight (or clipped)."""
    amax = block_amax(weight.astype(np.float32), axis, block_size)
    if clip is not None:
        amax = amax * clip
    # An all-zero block gets scale 1: its values quantize to 0 either way, a zero scale is
    # invalid; FP16's smallest normal keeps a tiny block's scale from flushing to zero.
    floor = float(np.finfo(dtype).smallest_normal) if np.dtype(dtype).itemsize < 4 else 0.0
    scale = np.where(amax > 0, np.maximum(amax / INT4_MAX, floor), 1.0).astype(dtype)
    steps = expand(scale.astype(np.float32), axis, block_size, weight.shape[axis])
    return to_int4(weight.astype(np.float32) / steps), scale


def dequantize(values: np.ndarray, scale: np.ndarray, axis: int, block_size: int) -> np.ndarray:
    """What DequantizeLinear-21 computes from the pair (float32)."""
    steps = expand(scale.astype(np.float32), axis, block_size, values.shape[axis])
    return np.asarray(values).astype(np.float32) * steps


def fitting_block(length: int, block_size: int, smallest: int) -> int | None:
    """The block size TensorRT reads as meant for a reduction axis of ``length``: the
    requested one when it divides the axis or covers it whole, else the largest divisor of
    the axis below it (None when that is under ``smallest``).

    TensorRT's ONNX parser takes a blocked axis as whole blocks of length / scale dim (it
    asserts "The quantization axis must divide into whole blocks"): a partial last block,
    which the ONNX spec allows, would build with a different block size than ONNX Runtime
    runs (K 240, block 128: TensorRT reads blocks of 120)."""
    if length <= block_size or length % block_size == 0:
        return block_size
    for size in range(block_size - 1, smallest - 1, -1):
        if length % size == 0:
            return size
    return None
