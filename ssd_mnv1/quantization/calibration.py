"""Calibration images, chosen and preprocessed identically for QAT and for the TFLite converter.

The int8 file reproduces a fake-quant model only if both derive their activation ranges from the
same pixels: the QAT callback and the exporter's representative dataset both call this.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..preprocess import IMAGE_SUFFIXES, is_image_file, load_image, normalize, resize


def calibration_images(source: str | os.PathLike, size: int, count: int = 100, seed: int = 0,
                       option: str = "--calib") -> list[np.ndarray]:
    """Up to ``count`` images from a folder (searched recursively), shuffled with ``seed``,
    preprocessed as ST's representative dataset: nearest resize, x/127.5 - 1, NHWC float32 (1,S,S,3)."""
    source = Path(source)
    if not source.is_dir():
        raise NotADirectoryError(f"{option} {source}: no such folder")
    files = sorted(p for p in source.rglob("*") if is_image_file(p))
    if not files:
        raise ValueError(f"{option} {source}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    rng = np.random.default_rng(seed)
    picked = [files[i] for i in rng.permutation(len(files))[:count]]
    return [normalize(resize(load_image(p), size))[None] for p in picked]
