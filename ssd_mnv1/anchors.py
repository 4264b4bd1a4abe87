"""Anchor generation with ST's constants (docs/st_model.md §3.2).

Anchors are normalized ``x1, y1, x2, y2`` and **not clipped** (ST's ``clip_boxes=False``), ordered
level (finest first), row, column, anchor. They are computed in float64 with ST's arithmetic (pixel
centres from a linspace, corners ± half the pixel size, then divided by S): cast to float32 this
gives the constants baked into ST's .h5 bit for bit, and kept in float64 it gives the anchors ST's
matcher uses, whose exact ties decide which anchors are positive (train_step README, "Matching").
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .int8 import dequantize, int8_affine
from .specs import ANCHOR_RATIOS, ResolutionSpec, resolution_spec


def level_anchor_shapes(sizes: tuple[float, float], scale: float = 1.0) -> np.ndarray:
    """The 5 (w, h) pairs of one location: ``(k*s0*sqrt(r), k*s0/sqrt(r))`` per ratio, then
    ``(k*s1, k*s1)``, with ``k = scale`` multiplied first (ST's order of operations).

    ST's extra anchor uses s1 itself, not sqrt(s0*s1) as in the original SSD paper.
    """
    s0, s1 = scale * sizes[0], scale * sizes[1]
    wh = [(s0 * math.sqrt(r), s0 / math.sqrt(r)) for r in ANCHOR_RATIOS]
    wh.append((s1 * math.sqrt(ANCHOR_RATIOS[0]), s1 / math.sqrt(ANCHOR_RATIOS[0])))
    return np.asarray(wh, dtype=np.float64)


def level_anchors(n: int, sizes: tuple[float, float], image_size: int) -> np.ndarray:
    """Anchors of an ``n x n`` level of an ``image_size`` input, shape ``(n*n*5, 4)``, float64.

    In pixels first, as ST's generator: the last bits of the float64 values decide exact IoU ties.
    """
    step = image_size / n
    centers = np.linspace(0.5 * step, (0.5 + n - 1) * step, n)
    cx, cy = np.meshgrid(centers, centers)
    ctr = np.stack([cx, cy], axis=-1).reshape(n * n, 1, 2)
    half = level_anchor_shapes(sizes, image_size).reshape(1, -1, 2) / 2.0
    boxes = np.concatenate([ctr - half, ctr + half], axis=-1)
    return boxes.reshape(-1, 4) / image_size


def generate_anchors(spec: ResolutionSpec | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All anchors of the model for ``spec`` (or an input size), ``(NA, 4)``.

    float32: the model's output constants; float64: what the matcher compares boxes with.
    """
    if not isinstance(spec, ResolutionSpec):
        spec = resolution_spec(spec)
    per_level = [level_anchors(n, s, spec.input_size) for n, s in zip(spec.level_sizes, spec.anchor_sizes)]
    return torch.from_numpy(np.concatenate(per_level)).to(dtype)


def int8_anchors(spec: ResolutionSpec | int) -> tuple[float, int, np.ndarray]:
    """(scale, zero point, codes ``(NA, 4)``) of the anchors as the project's int8 files hold them:
    the float32 anchors quantized per tensor with TFLite's min/max rule."""
    return int8_affine(generate_anchors(spec).numpy())


def deployed_anchors(spec: ResolutionSpec | int) -> np.ndarray:
    """The anchors an int8 file's anchors output gives (TFLM's DEQUANTIZE of :func:`int8_anchors`),
    float32 ``(NA, 4)``: what the host uses for a file with int8 outputs, which has no anchors output."""
    scale, zero_point, codes = int8_anchors(spec)
    return dequantize(codes, scale, zero_point)
