"""Calibration images, chosen and preprocessed identically for QAT and for the TFLite converter.

The int8 file reproduces a fake-quant model only if both derive their activation ranges from the
same pixels: the QAT callback and the exporter's representative dataset both call this.
"""

from __future__ import annotations

import os
from pathlib import Path

from typing import Sequence

import numpy as np
import torch

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


def as_batches(images: Sequence[np.ndarray], batch_size: int = 16) -> list[torch.Tensor]:
    """:func:`calibration_images`' NHWC arrays as NCHW torch batches."""
    return list(torch.from_numpy(np.concatenate(list(images))).permute(0, 3, 1, 2).float().split(batch_size))


def int8_simulation(model, calibration: Sequence[np.ndarray], per_tensor: bool = False):
    """The fake-quant model of the int8 files converted from ``model``: a QAT model as it is (its
    own ranges); a float model prepared and calibrated as the TFLite converter quantizes it (min/max
    of the float graph with float weights on ``calibration``, from :func:`calibration_images`), so
    that it, the int8 TFLite and the QDQ ONNX written from the same images carry the same scales."""
    from .qat import calibrate, is_qat, per_tensor_weights, prepare_qat

    if is_qat(model):
        if per_tensor_weights(model) != per_tensor:
            raise ValueError(f"the QAT model has {'per-tensor' if not per_tensor else 'per-channel'} weights; "
                             f"export it {'with' if not per_tensor else 'without'} --per-tensor")
        return model.eval()
    if not calibration:
        raise ValueError("a float model needs calibration images for int8 (--calib DIR)")
    qat = prepare_qat(model.eval().cpu(), per_tensor=per_tensor)
    return calibrate(qat, as_batches(calibration), float_weights=True).eval()
