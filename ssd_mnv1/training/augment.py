"""Box-aware training augmentation following ST's 2.0 recipe (imgaug 0.4.0), on torch tensors.

ST's pretrained models were trained with an imgaug pipeline applied to the already resized SxS
uint8 image (docs/st_model.md §8.4). Each op below is one of its ops with its parameters and
imgaug's semantics; ``bench/augment_parity.py`` compares the distributions against ST's own code.
Probabilities are the *effective* ones: ST wraps flips, crop and affine in ``Sometimes(0.5, ...)``,
so its config values ``horizontal_flip: 0.2`` / ``vertical_flip: 0.5`` become 0.1 / 0.25 here.

What is reproduced from imgaug (one line per quirk):

* one random op order per *batch* (``Sequential(random_order=True)`` is called once per batch);
  parameters are drawn per image. :class:`OrderedBatchSampler` hands the batch's order seed to
  every sample; a sample indexed without one gets its own order.
* the image stays uint8 between ops, with imgaug's rounding: Multiply and LinearContrast truncate
  (LUT ``astype``), Add / noise / blur / warps round.
* crop: each side U(0, 25 %) of the size, rounded to pixels, resized back with cv2 INTER_AREA
  (for an upscale: nearest-like with a linear blend at source pixel borders), not bilinear.
* affine: scale x and y drawn independently; ONE shear angle s per image applied as an x-shear
  ``-tan s`` and a y-shear ``+tan s`` (imgaug 0.4.0 with a tuple; scikit-image >= 0.21 matrices);
  matrix ``R(rot) Shx S(sx, sy) Shy`` about the image centre, then the translation.
* affine fill: one cval per channel, each ``int(U(0, 255))``; interpolation nearest or linear
  (bilinear border pixels blend with the fill, as cv2 BORDER_CONSTANT).
* LinearContrast pivots on 127 (``int(127.5)``), not on the image mean.
* Add ``U(-50, 50)``, one value per channel with probability 0.5, else one for all channels.
* AdditiveGaussianNoise: std U(0, 12.75) per image, the *same* noise on the three channels
  (imgaug's default ``per_channel=False`` samples an HxWx1 array).
* GaussianBlur: skipped for sigma <= 1e-3, kernel ``int(max(3.3 sigma, 5))`` made odd, reflect-101.
* boxes: geometric ops never clamp; at the end boxes with no overlap with the image are removed
  and the others clipped (imgaug ``remove_out_of_image().clip_out_of_image()``); images left
  without a box are dropped by :class:`~ssd_mnv1.training.data.DetectionCollate`.

Known differences, kept on purpose (measured by ``bench/augment_parity.py``, all within noise):

* ST keeps every clipped box that still overlaps the image, even sub-pixel slivers (0.36 % of the
  kept boxes at 224, ours 0.29 %, same within noise); ``min_box_size`` (default 0: ST's rule) can
  drop them. Boxes left with exactly zero width or height (an edge exactly on the image border:
  measure zero) are dropped, imgaug keeps them.
* cv2's fixed-point arithmetic is not bit-reproduced, only its rounding and its 1/32-pixel warp
  grid: against cv2 on random 224 images the crop resize and the blur differ by at most one grey
  level, the linear warp on ~2 % of pixels (border blends), the nearest warp on < 0.1 % (ties).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as TF
from torch.utils.data import BatchSampler
from torchvision import tv_tensors
from torchvision.transforms import v2


@dataclass
class Augmentation:
    """Every op of ST's list with its parameters; set a probability or magnitude to 0 to disable it."""

    #: Effective probability of a horizontal / vertical flip (ST: 0.5 x 0.2 and 0.5 x 0.5).
    horizontal_flip: float = 0.1
    vertical_flip: float = 0.25
    #: Crop each side by up to ``crop_max_fraction`` of the size, resized back (imgaug CropAndPad).
    crop_probability: float = 0.5
    crop_max_fraction: float = 0.25
    #: Affine: rotation (deg), shear (deg, one value for both axes), translation (fraction of the
    #: size), scale range (x and y drawn independently).
    affine_probability: float = 0.5
    rotation: float = 30.0
    shear: float = 15.0
    translation: float = 0.1
    scale: tuple[float, float] = (0.5, 1.1)
    #: Always applied: brightness multiply, contrast (pivot 127), additive offset (pixel levels, per
    #: channel with ``add_per_channel`` probability), Gaussian blur sigma in [0, blur_sigma] (pixels),
    #: Gaussian noise std in [0, noise] (fraction of 255, same noise on all channels).
    brightness: tuple[float, float] = (0.5, 1.5)
    contrast: tuple[float, float] = (0.75, 1.5)
    add: float = 50.0
    add_per_channel: float = 0.5
    blur_sigma: float = 3.0
    noise: float = 0.05
    #: imgaug's ``random_order=True``: the ops run in a random order (one per batch when the loader
    #: uses :class:`OrderedBatchSampler`, as ST's; else one per image).
    random_order: bool = True
    #: Drop boxes whose clipped width or height is under this many pixels (ST: 0, keep all that
    #: still overlap the image).
    min_box_size: float = 0.0

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
        for name in ("rotation", "shear", "translation", "add", "blur_sigma", "noise", "min_box_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"augmentation.{name} must be >= 0, got {getattr(self, name)}")
        if self.shear >= 90:
            raise ValueError(f"augmentation.shear must be < 90 degrees, got {self.shear}")


#: No augmentation at all (validation, overfitting tests).
NO_AUGMENTATION = Augmentation(horizontal_flip=0.0, vertical_flip=0.0, crop_probability=0.0,
                               affine_probability=0.0, brightness=(1.0, 1.0), contrast=(1.0, 1.0), add=0.0,
                               blur_sigma=0.0, noise=0.0, random_order=False)


# ------------------------------------------------------------------------------------ helpers
def _uniform(lo: float, hi: float, n: int = 1) -> torch.Tensor:
    return torch.rand(n, dtype=torch.float64) * (hi - lo) + lo


def _raw(inpt: torch.Tensor) -> torch.Tensor:
    return inpt.as_subclass(torch.Tensor)


def _to_uint8(x: torch.Tensor, rounding: str) -> torch.Tensor:
    """float pixels -> uint8 as imgaug does: ``floor`` (LUT astype after clip) or ``round``."""
    x = x.clamp(0.0, 255.0)
    return (x.floor() if rounding == "floor" else x.round()).to(torch.uint8)


class _Op(v2.Transform):
    """An op on ``tv_tensors.Image`` (uint8, CHW) and ``tv_tensors.BoundingBoxes`` (XYXY pixels)."""

    _transformed_types = (tv_tensors.Image, tv_tensors.BoundingBoxes)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return tv_tensors.wrap(self.boxes(_raw(inpt).to(torch.float64), params, inpt.canvas_size)
                                   .to(inpt.dtype), like=inpt)
        if inpt.dtype != torch.uint8:
            raise TypeError(f"{type(self).__name__} expects a uint8 image, got {inpt.dtype}")
        return tv_tensors.wrap(self.image(_raw(inpt), params), like=inpt)

    def image(self, img: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return img

    def boxes(self, boxes: torch.Tensor, params: dict[str, Any], canvas: tuple[int, int]) -> torch.Tensor:
        return boxes


# --------------------------------------------------------------------------------- geometric
class RandomFlip(_Op):
    """Mirror left-right (``axis="x"``) or top-bottom (``axis="y"``) with probability ``p``."""

    def __init__(self, p: float, axis: str):
        super().__init__()
        self.p, self.axis = p, axis

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"flip": bool(torch.rand(()) < self.p)}

    def image(self, img, params):
        return img.flip(-1 if self.axis == "x" else -2) if params["flip"] else img

    def boxes(self, boxes, params, canvas):
        if not params["flip"]:
            return boxes
        h, w = canvas
        if self.axis == "x":
            return torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        return torch.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], dim=1)


def _area_upscale_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cv2.resize INTER_AREA taps for an upscale (n_out >= n_in) along one axis: index, next, weight."""
    inv_scale = n_out / n_in
    scale = 1.0 / inv_scale
    d = torch.arange(n_out, dtype=torch.float64)
    sx = torch.floor(d * scale)
    fx = (d + 1) - (sx + 1) * inv_scale
    fx = torch.where(fx <= 0, torch.zeros_like(fx), fx - torch.floor(fx))
    sx = sx.long()
    last = sx >= n_in - 1
    fx = torch.where(last, torch.zeros_like(fx), fx)
    sx = sx.clamp(0, n_in - 1)
    return sx, (sx + 1).clamp(max=n_in - 1), fx


def resize_area_up(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 CHW image enlarged to ``size`` like ``cv2.resize(..., INTER_AREA)`` (imgaug's choice
    for upsizing in ``CropAndPad(keep_size=True)``)."""
    h, w = img.shape[-2:]
    if (h, w) == tuple(size):
        return img
    y0, y1, fy = _area_upscale_taps(h, size[0])
    x0, x1, fx = _area_upscale_taps(w, size[1])
    x = img.to(torch.float64)
    fy, fx = fy[:, None], fx[None, :]
    top = x[..., y0, :][..., x0] * (1 - fx) + x[..., y0, :][..., x1] * fx
    bot = x[..., y1, :][..., x0] * (1 - fx) + x[..., y1, :][..., x1] * fx
    return _to_uint8(top * (1 - fy) + bot * fy, "round")


class RandomCropSides(_Op):
    """Crop each side independently by U(0, max_fraction) of the size (rounded to pixels), then
    resize back to the input size with cv2's INTER_AREA (imgaug ``CropAndPad(percent=(-f, 0))``)."""

    def __init__(self, max_fraction: float):
        super().__init__()
        self.max_fraction = max_fraction

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        top, right, bottom, left = (_uniform(0.0, self.max_fraction, 4)
                                    * torch.tensor([height, width, height, width], dtype=torch.float64)
                                    ).round().long().tolist()
        bottom = min(bottom, height - top - 1)  # imgaug keeps at least one pixel
        right = min(right, width - left - 1)
        return {"top": top, "left": left, "height": height - top - bottom, "width": width - left - right,
                "size": (height, width)}

    def image(self, img, p):
        crop = img[..., p["top"]:p["top"] + p["height"], p["left"]:p["left"] + p["width"]]
        return resize_area_up(crop, p["size"])

    def boxes(self, boxes, p, canvas):
        h, w = p["size"]
        sx, sy = w / p["width"], h / p["height"]
        off = torch.tensor([p["left"], p["top"], p["left"], p["top"]], dtype=boxes.dtype)
        return (boxes - off) * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype)


def st_affine_matrix(scale_x: float, scale_y: float, rotation: float, shear: float, translate_x: float,
                     translate_y: float, height: int, width: int) -> torch.Tensor:
    """3x3 forward matrix of imgaug 0.4.0's ``Affine`` in continuous pixel coordinates (pixel
    centres at i + 0.5): about the centre, ``R(rotation) @ ShearX(-tan s) @ S(sx, sy) @ ShearY(tan s)``
    with the same shear angle ``s`` on both axes, then the translation (pixels). Angles in degrees."""
    r, t = math.radians(rotation), math.tan(math.radians(shear))
    rot = torch.tensor([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]], dtype=torch.float64)
    lin = (rot @ torch.tensor([[1.0, -t], [0.0, 1.0]], dtype=torch.float64)
           @ torch.diag(torch.tensor([scale_x, scale_y], dtype=torch.float64))
           @ torch.tensor([[1.0, 0.0], [t, 1.0]], dtype=torch.float64))
    centre = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
    m = torch.eye(3, dtype=torch.float64)
    m[:2, :2] = lin
    m[:2, 2] = centre + torch.tensor([translate_x, translate_y], dtype=torch.float64) - lin @ centre
    return m


def warp_affine(img: torch.Tensor, matrix: torch.Tensor, nearest: bool, fill: Sequence[float]) -> torch.Tensor:
    """uint8 CHW image warped by the forward ``matrix`` (continuous coordinates) like
    ``cv2.warpAffine(..., borderMode=BORDER_CONSTANT, borderValue=fill)``."""
    c, h, w = img.shape
    inv = torch.linalg.inv(matrix)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5,
                            torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
    src_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    src_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    if not nearest:  # cv2 snaps source positions to 1/32 pixel (INTER_TAB_SIZE) for bilinear
        src_x = torch.floor((src_x - 0.5) * 32 + 0.5) / 32 + 0.5
        src_y = torch.floor((src_y - 0.5) * 32 + 0.5) / 32 + 0.5
    grid = torch.stack([2 * src_x / w - 1, 2 * src_y / h - 1], dim=-1)[None].float()
    fill_t = torch.tensor(list(fill), dtype=torch.float32).reshape(c, 1, 1)
    x = (img.float() - fill_t)[None]
    out = TF.grid_sample(x, grid, mode="nearest" if nearest else "bilinear", padding_mode="zeros",
                         align_corners=False)[0] + fill_t
    return _to_uint8(out, "round")


class RandomAffineST(_Op):
    """imgaug ``Affine`` with ST's parameters: scale x, y ~ U(scale) independently, translation
    U(-t, t) of the size per axis, rotation U(-r, r), one shear U(-s, s) for both axes, nearest or
    linear interpolation, fill ``int(U(0, 255))`` per channel. Boxes: the 4 corners, enclosed."""

    def __init__(self, rotation: float, shear: float, translation: float, scale: tuple[float, float]):
        super().__init__()
        self.rotation, self.shear, self.translation, self.scale = rotation, shear, translation, tuple(scale)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        sx, sy = _uniform(*self.scale, 2).tolist()
        tx, ty = _uniform(-self.translation, self.translation, 2).tolist()
        rot = float(_uniform(-self.rotation, self.rotation))
        shear = float(_uniform(-self.shear, self.shear))
        fill = torch.floor(_uniform(0.0, 255.0, 3)).tolist()
        nearest = bool(torch.rand(()) < 0.5)
        matrix = st_affine_matrix(sx, sy, rot, shear, tx * width, ty * height, height, width)
        return {"matrix": matrix, "fill": fill, "nearest": nearest,
                "params": {"scale_x": sx, "scale_y": sy, "translate_x": tx, "translate_y": ty,
                           "rotation": rot, "shear": shear}}

    def image(self, img, p):
        return warp_affine(img, p["matrix"], p["nearest"], p["fill"][:img.shape[0]])

    def boxes(self, boxes, p, canvas):
        if not len(boxes):
            return boxes
        corners = torch.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]], boxes[:, [2, 3]]], dim=1)
        m = p["matrix"].to(boxes.dtype)
        moved = corners @ m[:2, :2].T + m[:2, 2]
        return torch.cat([moved.amin(dim=1), moved.amax(dim=1)], dim=1)


# -------------------------------------------------------------------------------- photometric
class _ImageOnly(_Op):
    _transformed_types = (tv_tensors.Image,)


class _UniformParameter(_ImageOnly):
    """An op with one parameter per image, ``param``, drawn uniformly from ``value_range``."""

    param = ""

    def __init__(self, value_range: tuple[float, float]):
        super().__init__()
        self.value_range = tuple(value_range)

    def make_params(self, flat_inputs):
        return {self.param: float(_uniform(*self.value_range))}


class _PerImageGain(_UniformParameter):
    """A gain applied through a uint8 LUT (truncation)."""

    param = "gain"
    pivot = 0.0

    def image(self, img, p):
        gain = torch.tensor(p["gain"], dtype=torch.float32)
        return _to_uint8(self.pivot + gain * (img.float() - self.pivot), "floor")


class RandomMultiply(_PerImageGain):
    """imgaug ``Multiply(range)``: ``v * factor``."""


class RandomLinearContrast(_PerImageGain):
    """imgaug ``LinearContrast(range)``: ``127 + alpha (v - 127)``."""

    pivot = 127.0


class RandomAdd(_ImageOnly):
    """imgaug ``Add((-delta, delta), per_channel)``: values in pixel levels, rounded."""

    def __init__(self, delta: float, per_channel: float):
        super().__init__()
        self.delta, self.per_channel = delta, per_channel

    def make_params(self, flat_inputs):
        n = 3 if torch.rand(()) < self.per_channel else 1
        return {"offset": _uniform(-self.delta, self.delta, n).round()}

    def image(self, img, p):
        offset = p["offset"]
        if len(offset) > 1:
            offset = offset[:img.shape[0]]
        return _to_uint8(img.float() + offset.float().reshape(-1, 1, 1), "round")


def st_blur_kernel_size(sigma: float) -> int:
    """imgaug 0.4.0's Gaussian kernel size for ``sigma`` (odd, at least 5)."""
    k = 3.3 * sigma if sigma < 3.0 else (2.9 * sigma if sigma < 5.0 else 2.6 * sigma)
    k = int(max(k, 5))
    return k + 1 if k % 2 == 0 else k


class RandomGaussianBlur(_UniformParameter):
    """imgaug ``GaussianBlur(sigma=(0, max_sigma))``: cv2 Gaussian, reflect-101 borders."""

    param = "sigma"
    eps = 1e-3

    def __init__(self, max_sigma: float):
        super().__init__((0.0, max_sigma))

    def image(self, img, p):
        sigma = p["sigma"]
        if sigma <= self.eps:
            return img
        k = st_blur_kernel_size(sigma)
        h, w = img.shape[-2:]
        if k // 2 >= min(h, w):  # reflect padding needs a kernel smaller than the image
            k = 2 * (min(h, w) - 1) - 1 if min(h, w) > 1 else 1
            if k < 3:
                return img
        return v2.functional.gaussian_blur_image(img, kernel_size=[k, k], sigma=[sigma, sigma])


class RandomGaussianNoise(_UniformParameter):
    """imgaug ``AdditiveGaussianNoise(scale=(0, max_std))``: std drawn per image, one HxW noise
    field shared by all channels, rounded to pixel levels."""

    param = "std"

    def __init__(self, max_std: float):
        super().__init__((0.0, max_std))

    def image(self, img, p):
        noise = torch.randn(1, *img.shape[-2:]) * p["std"]
        return _to_uint8(img.float() + noise.round(), "round")


# --------------------------------------------------------------------------------- pipeline
def order_from_seed(seed: int, n: int) -> list[int]:
    """The op order that a batch with ``seed`` uses (a permutation of ``range(n)``)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g).tolist()


def finish_boxes(boxes: torch.Tensor, height: int, width: int, min_size: float = 0.0) -> torch.Tensor:
    """imgaug ``remove_out_of_image().clip_out_of_image()``: which boxes overlap the image (a bool
    mask) -- and are at least ``min_size`` pixels wide and high once clipped -- and the clipped boxes."""
    clipped = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                           boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    # overlap with the image (imgaug's intersection test); a zero-area leftover (an edge exactly on
    # the border, which imgaug would keep) is dropped too, as its log-size encoding is -inf
    keep = ((boxes[:, 0] <= width) & (boxes[:, 2] >= 0) & (boxes[:, 1] <= height) & (boxes[:, 3] >= 0)
            & (w > 0) & (h > 0) & (w >= min_size) & (h >= min_size))
    return keep, clipped


class STAugmentation:
    """ST's augmentation of one sample ``{"image": Image uint8, "boxes": BoundingBoxes, "labels"}``.

    ``pipeline(sample, order_seed)`` runs the ops in the order drawn from ``order_seed`` (the same
    for every sample of a batch, see :class:`OrderedBatchSampler`), or in a fresh random order when
    it is None. Returns the image as float in [0, 1], and the boxes that still overlap the image,
    clipped to it, with their labels.
    """

    def __init__(self, ops: list[v2.Transform], random_order: bool = True, min_box_size: float = 0.0):
        self.ops, self.random_order, self.min_box_size = list(ops), random_order, min_box_size

    def order(self, order_seed: Optional[int] = None) -> list[int]:
        n = len(self.ops)
        if not self.random_order or n < 2:
            return list(range(n))
        if order_seed is None:
            return torch.randperm(n).tolist()
        return order_from_seed(order_seed, n)

    def __call__(self, sample: dict, order_seed: Optional[int] = None) -> dict:
        out = dict(sample)
        for k in self.order(order_seed):
            out = self.ops[k](out)
        image, boxes = out["image"], out["boxes"]
        height, width = image.shape[-2:]
        keep, clipped = finish_boxes(_raw(boxes).float(), height, width, self.min_box_size)
        out["boxes"] = tv_tensors.wrap(clipped[keep], like=boxes)
        out["labels"] = out["labels"][keep]
        out["image"] = tv_tensors.wrap(_raw(image).float() / 255.0, like=image)
        return out


def build_ops(cfg: Augmentation) -> list[v2.Transform]:
    """ST's op list (imgaug ``Sequential`` children, in ST's order) for ``cfg``; disabled ops left out."""
    ops: list[v2.Transform] = []
    if cfg.horizontal_flip > 0:
        ops.append(RandomFlip(cfg.horizontal_flip, "x"))
    if cfg.vertical_flip > 0:
        ops.append(RandomFlip(cfg.vertical_flip, "y"))
    if cfg.crop_probability > 0 and cfg.crop_max_fraction > 0:
        ops.append(v2.RandomApply([RandomCropSides(cfg.crop_max_fraction)], p=cfg.crop_probability))
    if cfg.affine_probability > 0:
        affine = RandomAffineST(cfg.rotation, cfg.shear, cfg.translation, cfg.scale)
        ops.append(v2.RandomApply([affine], p=cfg.affine_probability))
    if tuple(cfg.brightness) != (1.0, 1.0):
        ops.append(RandomMultiply(cfg.brightness))
    if cfg.blur_sigma > 0:
        ops.append(RandomGaussianBlur(cfg.blur_sigma))
    if cfg.noise > 0:
        ops.append(RandomGaussianNoise(cfg.noise * 255.0))
    if tuple(cfg.contrast) != (1.0, 1.0):
        ops.append(RandomLinearContrast(cfg.contrast))
    if cfg.add > 0:
        ops.append(RandomAdd(cfg.add, cfg.add_per_channel))
    return ops


def build_transforms(cfg: Augmentation) -> STAugmentation:
    """The augmentation for a sample ``{"image": Image uint8, "boxes": BoundingBoxes, "labels": ...}``
    (see :class:`STAugmentation`)."""
    return STAugmentation(build_ops(cfg), cfg.random_order, cfg.min_box_size)


class OrderedBatchSampler(BatchSampler):
    """A ``BatchSampler`` that tags every index of a batch with the batch's op-order seed:
    it yields ``[(index, seed), ...]`` so that all samples of a batch share one random op order,
    as ST's ``data_aug`` does (one ``Sequential(random_order=True)`` call per batch)."""

    def __iter__(self):
        for batch in super().__iter__():
            seed = int(torch.randint(0, 2**31 - 1, ()))
            yield [(int(i), seed) for i in batch]
