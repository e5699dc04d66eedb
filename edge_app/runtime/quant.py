"""Quantize and dequantize, once, the way TFLite defines it: real = (q - zero_point) * scale."""

from __future__ import annotations

import numpy as np


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype, out: np.ndarray | None = None) -> np.ndarray:
    """Map real values to ``dtype`` (uint8/int8/int16): round, then clip to the type's range.

    Example:
        >>> quantize(np.array([0.0, 1.0]), 1 / 255, 0, np.uint8)
        array([  0, 255], dtype=uint8)
    """
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, np.float32) / np.float32(scale) + np.float32(zero_point))
    np.clip(q, info.min, info.max, out=q)
    if out is None:
        return q.astype(dtype)
    out[...] = q
    return out


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Real values (float32) of a quantized array. ``scale == 0`` means "not quantized"."""
    if not scale:
        return np.asarray(q, np.float32)
    # Subtract in float32: uint8 - zero_point would wrap around in integer arithmetic.
    return (np.asarray(q, np.float32) - np.float32(zero_point)) * np.float32(scale)
