"""TFLite's int8 arithmetic, where the host must repeat it bit for bit: the min/max quantization
TFLite gives a constant, and dequantization as TFLite Micro's DEQUANTIZE computes it."""

from __future__ import annotations

import numpy as np


def int8_affine(values: np.ndarray) -> tuple[float, int, np.ndarray]:
    """Per-tensor asymmetric int8 quantization of a constant (TFLite's min/max rule, range incl. 0):
    (scale, zero point, codes)."""
    lo, hi = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    scale = (hi - lo) / 255.0
    zero_point = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    q = np.clip(np.round(values / scale) + zero_point, -128, 127).astype(np.int8)
    return scale, zero_point, q


def dequantize(codes: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float32 values of int8/uint8 ``codes`` as TFLM's DEQUANTIZE gives them: the file's float32
    scale times (code - zero point) in double, rounded once to float32."""
    return (np.float64(np.float32(scale)) * (np.asarray(codes).astype(np.float64) - zero_point)).astype(np.float32)
