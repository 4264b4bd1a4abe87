"""Box-aware training augmentation with torchvision transforms v2, following ST's 2.0 recipe.

ST's pretrained models were trained with an imgaug pipeline applied to the already resized SxS
image (st_reference.md §8.4); each op below is one of its ops with its parameters. Probabilities
are the *effective* ones: ST wraps flips, crop and affine in ``Sometimes(0.5, ...)``, so its config
values ``horizontal_flip: 0.2`` / ``vertical_flip: 0.5`` become 0.1 / 0.25 here.

Known differences from imgaug, kept because torchvision has no equivalent and they do not change
what the model has to learn: the affine scale is isotropic (imgaug samples x and y
independently), and contrast pivots on the image mean (imgaug's LinearContrast on 128).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


@dataclass
class Augmentation:
    """Every op of ST's list with its parameters; set a probability or magnitude to 0 to disable it."""

    #: Effective probability of a horizontal / vertical flip (ST: 0.5 x 0.2 and 0.5 x 0.5).
    horizontal_flip: float = 0.1
    vertical_flip: float = 0.25
    #: Crop each side by up to ``crop_max_fraction`` of the size, resized back (imgaug CropAndPad).
    crop_probability: float = 0.5
    crop_max_fraction: float = 0.25
    #: Affine: rotation (deg), shear (deg), translation (fraction of the size), scale range.
    affine_probability: float = 0.5
    rotation: float = 30.0
    shear: float = 15.0
    translation: float = 0.1
    scale: tuple[float, float] = (0.5, 1.1)
    #: Always applied: brightness multiply, contrast, additive offset (pixel levels, per channel
    #: with ``add_per_channel`` probability), Gaussian blur sigma in [0, blur_sigma] (pixels),
    #: Gaussian noise std in [0, noise] (fraction of 255).
    brightness: tuple[float, float] = (0.5, 1.5)
    contrast: tuple[float, float] = (0.75, 1.5)
    add: float = 50.0
    add_per_channel: float = 0.5
    blur_sigma: float = 3.0
    noise: float = 0.05
    #: imgaug's ``random_order=True``: the ops run in a random order.
    random_order: bool = True

    def __post_init__(self):
        for name in ("horizontal_flip", "vertical_flip", "crop_probability", "affine_probability",
                     "add_per_channel"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation.{name} must be a probability in [0, 1], got {value}")
        if not 0.0 <= self.crop_max_fraction < 0.5:
            raise ValueError(f"augmentation.crop_max_fraction must be in [0, 0.5), got {self.crop_max_fraction}")
        for name in ("scale", "brightness", "contrast"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"augmentation.{name} must be a range (low, high) with 0 < low <= high, "
                                 f"got {getattr(self, name)}")
        for name in ("rotation", "shear", "translation", "add", "blur_sigma", "noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"augmentation.{name} must be >= 0, got {getattr(self, name)}")


#: No augmentation at all (validation, overfitting tests).
NO_AUGMENTATION = Augmentation(horizontal_flip=0.0, vertical_flip=0.0, crop_probability=0.0,
                               affine_probability=0.0, brightness=(1.0, 1.0), contrast=(1.0, 1.0), add=0.0,
                               blur_sigma=0.0, noise=0.0, random_order=False)


class RandomCropSides(v2.Transform):
    """Crop each side independently by U(0, max_fraction) of the size, then resize back."""

    def __init__(self, max_fraction: float):
        super().__init__()
        self.max_fraction = max_fraction

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        top, bottom, left, right = (torch.rand(4) * self.max_fraction).tolist()
        t, l = int(round(top * height)), int(round(left * width))
        h = max(1, height - t - int(round(bottom * height)))
        w = max(1, width - l - int(round(right * width)))
        return {"top": t, "left": l, "height": h, "width": w, "size": [height, width]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resized_crop, inpt, **params, antialias=True)


class RandomAffineRandomFill(v2.RandomAffine):
    """RandomAffine whose fill level and interpolation (nearest or bilinear) are drawn per image, as ST's."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        params = super().make_params(flat_inputs)
        params["fill"] = float(torch.rand(()))
        params["interpolation"] = (v2.InterpolationMode.NEAREST if torch.rand(()) < 0.5
                                   else v2.InterpolationMode.BILINEAR)
        return params

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        params = dict(params)
        fill = params.pop("fill")
        interpolation = params.pop("interpolation")
        fill = [fill] * 3 if isinstance(inpt, tv_tensors.Image) else None
        return self._call_kernel(F.affine, inpt, **params, interpolation=interpolation, fill=fill,
                                 center=self.center)


class _ImageOnly(v2.Transform):
    _transformed_types = (tv_tensors.Image,)


class RandomAdd(_ImageOnly):
    """Add U(-delta, delta) (float image units), per channel with probability ``per_channel``."""

    def __init__(self, delta: float, per_channel: float):
        super().__init__()
        self.delta, self.per_channel = delta, per_channel

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        n = 3 if torch.rand(()) < self.per_channel else 1
        return {"offset": (torch.rand(n) * 2 - 1) * self.delta}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = (inpt + params["offset"].reshape(-1, 1, 1).to(inpt)).clamp(0.0, 1.0)
        return tv_tensors.wrap(out, like=inpt)


class _RandomSigma(_ImageOnly):
    """An image-only op whose strength sigma is drawn from U(0, max_sigma) per image."""

    def __init__(self, max_sigma: float):
        super().__init__()
        self.max_sigma = max_sigma

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"sigma": float(torch.rand(())) * self.max_sigma}


class RandomGaussianBlur(_RandomSigma):
    """Gaussian blur with sigma ~ U(0, max_sigma) pixels; the kernel covers 3 sigma like imgaug's."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        sigma = params["sigma"]
        if sigma < 0.1:  # below a tenth of a pixel the kernel is the identity
            return inpt
        k = 2 * math.ceil(3 * sigma) + 1
        return self._call_kernel(F.gaussian_blur, inpt, kernel_size=[k, k], sigma=[sigma, sigma])


class RandomGaussianNoise(_RandomSigma):
    """Additive Gaussian noise with std ~ U(0, max_sigma) (float image units)."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.gaussian_noise, inpt, sigma=params["sigma"], clip=True)


def build_transforms(cfg: Augmentation) -> v2.Transform:
    """The v2 pipeline for a sample ``{"image": Image uint8, "boxes": BoundingBoxes, "labels": ...}``.

    Returns the image as float in [0, 1]; boxes are clamped to the image and those left with a
    side under one pixel are dropped together with their labels.
    """
    ops: list[v2.Transform] = []
    if cfg.horizontal_flip > 0:
        ops.append(v2.RandomHorizontalFlip(cfg.horizontal_flip))
    if cfg.vertical_flip > 0:
        ops.append(v2.RandomVerticalFlip(cfg.vertical_flip))
    if cfg.crop_probability > 0 and cfg.crop_max_fraction > 0:
        ops.append(v2.RandomApply([RandomCropSides(cfg.crop_max_fraction)], p=cfg.crop_probability))
    if cfg.affine_probability > 0:
        affine = RandomAffineRandomFill(degrees=cfg.rotation, translate=(cfg.translation, cfg.translation),
                                        scale=cfg.scale, shear=(-cfg.shear, cfg.shear, -cfg.shear, cfg.shear))
        ops.append(v2.RandomApply([affine], p=cfg.affine_probability))
    if cfg.brightness != (1.0, 1.0):
        ops.append(v2.ColorJitter(brightness=cfg.brightness))
    if cfg.contrast != (1.0, 1.0):
        ops.append(v2.ColorJitter(contrast=cfg.contrast))
    if cfg.add > 0:
        ops.append(RandomAdd(cfg.add / 255.0, cfg.add_per_channel))
    if cfg.blur_sigma > 0:
        ops.append(RandomGaussianBlur(cfg.blur_sigma))
    if cfg.noise > 0:
        ops.append(RandomGaussianNoise(cfg.noise))
    body = v2.RandomOrder(ops) if cfg.random_order and len(ops) > 1 else v2.Compose(ops or [v2.Identity()])
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), body, v2.ClampBoundingBoxes(),
                       v2.SanitizeBoundingBoxes(min_size=1.0)])
