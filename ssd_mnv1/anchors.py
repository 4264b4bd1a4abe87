"""Anchor generation with ST's constants (st_reference.md §3.2).

Anchors are normalized ``x1, y1, x2, y2`` and **not clipped** (ST's ``clip_boxes=False``), ordered
level (finest first), row, column, anchor. They are computed in float64 and cast to float32 because
that reproduces the constants baked into ST's .h5 bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .specs import ANCHOR_RATIOS, ResolutionSpec, resolution_spec


def level_anchor_shapes(sizes: tuple[float, float]) -> np.ndarray:
    """The 5 (w, h) pairs of one location: ``(s0*sqrt(r), s0/sqrt(r))`` per ratio, then ``(s1, s1)``.

    ST's extra anchor uses s1 itself, not sqrt(s0*s1) as in the original SSD paper.
    """
    s0, s1 = sizes
    wh = [(s0 * math.sqrt(r), s0 / math.sqrt(r)) for r in ANCHOR_RATIOS]
    wh.append((s1, s1))
    return np.asarray(wh, dtype=np.float64)


def level_anchors(n: int, sizes: tuple[float, float]) -> np.ndarray:
    """Anchors of an ``n x n`` level, shape ``(n*n*5, 4)``, float64."""
    centers = (np.arange(n, dtype=np.float64) + 0.5) / n
    cy, cx = np.meshgrid(centers, centers, indexing="ij")
    ctr = np.stack([cx, cy], axis=-1).reshape(n * n, 1, 2)
    half = level_anchor_shapes(sizes).reshape(1, -1, 2) / 2.0
    boxes = np.concatenate([ctr - half, ctr + half], axis=-1)
    return boxes.reshape(-1, 4)


def generate_anchors(spec: ResolutionSpec | int) -> torch.Tensor:
    """All anchors of the model for ``spec`` (or an input size), float32 ``(NA, 4)``."""
    if not isinstance(spec, ResolutionSpec):
        spec = resolution_spec(spec)
    per_level = [level_anchors(n, s) for n, s in zip(spec.level_sizes, spec.anchor_sizes)]
    return torch.from_numpy(np.concatenate(per_level).astype(np.float32))
