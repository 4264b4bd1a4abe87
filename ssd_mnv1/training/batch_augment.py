"""ST's training augmentation (:mod:`.augment`) applied to a whole batch at once, on the batch's device.

Why: the per-image ops run in the DataLoader workers on the CPU; after the batch is on the
accelerator (``LightningDataModule.on_after_batch_transfer``) the same augmentation can run there as
a few batched tensor ops. Same ops (from :func:`~.augment.build_ops`), same parameter distributions
and per-op probabilities, parameters drawn per image, one random op order per batch, and the image
kept uint8 between ops with the same rounding. Boxes go through the per-image ops' own box code
(a small loop on the CPU; they are a few numbers per image).

Two steps, so that a test can feed the same draws to both implementations:
:meth:`BatchAugmentation.sample_params` (a :class:`BatchParams`; ``params.for_image(i)`` is image
``i``'s draws in the format of the per-image ops' ``make_params``) and :meth:`BatchAugmentation.apply`.

Differences from the per-image ops (tests/test_batch_augment.py, CPU, random and synthetic images):

* none measured on the CPU: every op and the whole pipeline give the same uint8 pixels and float32
  boxes as the per-image ops for the same draws (max difference 0; crop resize, warps and blur
  included: same float64 / float32 arithmetic in the same order, Gaussian kernels built with
  torchvision's formula), whole batch or in CPU chunks.

Device notes (not measured here: no GPU):

* the noise field is drawn on the images' device, so one seed gives the same parameters on every
  device but a different noise field on CUDA than on the CPU (another random generator).
* CUDA's ``grid_sample`` / ``conv2d`` may round differently from the CPU's in the last float bit,
  which can move a pixel by one grey level at a rounding tie.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as TF
from torchvision.transforms import v2

from .augment import (Augmentation, RandomAdd, RandomAffineST, RandomCropSides, RandomFlip, RandomGaussianBlur,
                      RandomGaussianNoise, RandomLinearContrast, RandomMultiply, _area_upscale_taps, _to_uint8,
                      build_ops, finish_boxes, order_from_seed, st_affine_matrix, st_blur_kernel_size)

Tensor = torch.Tensor
#: Ops that move pixels (and so boxes).
GEOMETRIC = frozenset({"hflip", "vflip", "crop", "affine"})
_KINDS = ((RandomCropSides, "crop"), (RandomAffineST, "affine"), (RandomMultiply, "multiply"),
          (RandomLinearContrast, "contrast"), (RandomGaussianBlur, "blur"), (RandomGaussianNoise, "noise"),
          (RandomAdd, "add"))


def op_kind(op: v2.Transform) -> tuple[str, v2.Transform, float]:
    """``(kind, per-image op, probability of applying it)`` of one entry of :func:`build_ops`
    (crop and affine come wrapped in ``v2.RandomApply``)."""
    p = 1.0
    if isinstance(op, v2.RandomApply):
        p, op = float(op.p), op.transforms[0]
    if isinstance(op, RandomFlip):
        return ("hflip" if op.axis == "x" else "vflip"), op, p
    for cls, kind in _KINDS:
        if isinstance(op, cls):
            return kind, op, p
    raise TypeError(f"no batched version of {type(op).__name__}")


# ----------------------------------------------------------------------------------- draws
def _uniform(lo: float, hi: float, shape, generator: Optional[torch.Generator]) -> Tensor:
    """``augment._uniform`` for a batch: float64 U(lo, hi), the same arithmetic."""
    return torch.rand(shape, dtype=torch.float64, generator=generator) * (hi - lo) + lo


def _chance(p: float, n: int, generator: Optional[torch.Generator]) -> Tensor:
    """n Bernoulli(p) draws, as the per-image ``torch.rand(()) < p``."""
    return torch.rand(n, generator=generator) < p


def _normal_field(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """Standard normal float32 drawn on ``device``; a CUDA generator is seeded from the CPU one, so
    a seeded CPU generator makes the whole batch reproducible on any device."""
    if generator is None:
        return torch.randn(shape, device=device)
    if device.type == "cpu":
        return torch.randn(shape, generator=generator)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return torch.randn(shape, generator=torch.Generator(device).manual_seed(seed), device=device)


def draw_op(kind: str, op: v2.Transform, p: float, n: int, height: int, width: int,
            generator: Optional[torch.Generator]) -> dict[str, Tensor]:
    """One op's parameters for ``n`` images (CPU tensors), with the distributions of its ``make_params``."""
    if kind in ("hflip", "vflip"):
        return {"apply": _chance(op.p, n, generator)}
    if kind == "crop":
        sides = (_uniform(0.0, op.max_fraction, (n, 4), generator)
                 * torch.tensor([height, width, height, width], dtype=torch.float64)).round().long()
        top, right, bottom, left = sides.unbind(1)
        bottom = torch.minimum(bottom, height - top - 1)  # imgaug keeps at least one pixel
        right = torch.minimum(right, width - left - 1)
        return {"apply": _chance(p, n, generator), "top": top, "left": left,
                "height": height - top - bottom, "width": width - left - right}
    if kind == "affine":
        apply = _chance(p, n, generator)
        scale = _uniform(*op.scale, (n, 2), generator)
        shift = _uniform(-op.translation, op.translation, (n, 2), generator)
        rotation = _uniform(-op.rotation, op.rotation, n, generator)
        shear = _uniform(-op.shear, op.shear, n, generator)
        fill = _uniform(0.0, 255.0, (n, 3), generator).floor()
        nearest = _chance(0.5, n, generator)
        matrix = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        for i in apply.nonzero().flatten().tolist():
            (sx, sy), (tx, ty) = scale[i].tolist(), shift[i].tolist()
            matrix[i] = st_affine_matrix(sx, sy, float(rotation[i]), float(shear[i]), tx * width, ty * height,
                                         height, width)
        return {"apply": apply, "matrix": matrix, "fill": fill, "nearest": nearest}
    if kind in ("multiply", "contrast"):
        return {"gain": _uniform(*op.value_range, n, generator)}
    if kind == "blur":
        return {"sigma": _uniform(*op.value_range, n, generator)}
    if kind == "noise":
        return {"std": _uniform(*op.value_range, n, generator)}
    if kind == "add":
        per_channel = _chance(op.per_channel, n, generator)
        offset = _uniform(-op.delta, op.delta, (n, 3), generator).round()
        return {"offset": torch.where(per_channel[:, None], offset, offset[:, :1]), "per_channel": per_channel}
    raise KeyError(kind)


@dataclass
class BatchParams:
    """Every op's draws for a batch: ``draws[kind][name]`` is a CPU tensor with one row per image,
    except ``draws["noise"]["field"]``, the (B, 1, H, W) standard normal noise on the images' device."""

    size: tuple[int, int]
    draws: dict[str, dict[str, Tensor]]

    @property
    def batch_size(self) -> int:
        return next((len(t) for d in self.draws.values() for t in d.values()), 0)

    def slice(self, start: int, stop: int) -> "BatchParams":
        """The draws of images ``start:stop``."""
        return BatchParams(self.size, {kind: {name: t[start:stop] for name, t in d.items()}
                                       for kind, d in self.draws.items()})

    def for_image(self, i: int) -> dict[str, Optional[dict[str, Any]]]:
        """Image ``i``'s draws as the per-image ops' ``transform(inpt, params)`` takes them, by kind;
        None where a ``RandomApply`` op is skipped. (The noise op draws its own field: see tests.)"""
        out: dict[str, Optional[dict[str, Any]]] = {}
        for kind, d in self.draws.items():
            if kind in ("hflip", "vflip"):
                out[kind] = {"flip": bool(d["apply"][i])}
            elif kind == "crop":
                out[kind] = ({"top": int(d["top"][i]), "left": int(d["left"][i]), "height": int(d["height"][i]),
                              "width": int(d["width"][i]), "size": self.size} if d["apply"][i] else None)
            elif kind == "affine":
                out[kind] = ({"matrix": d["matrix"][i], "fill": d["fill"][i].tolist(),
                              "nearest": bool(d["nearest"][i])} if d["apply"][i] else None)
            elif kind in ("multiply", "contrast"):
                out[kind] = {"gain": float(d["gain"][i])}
            elif kind == "blur":
                out[kind] = {"sigma": float(d["sigma"][i])}
            elif kind == "noise":
                out[kind] = {"std": float(d["std"][i])}
            elif kind == "add":
                out[kind] = {"offset": d["offset"][i] if d["per_channel"][i] else d["offset"][i, :1]}
        return out


# ------------------------------------------------------------------------ batched pixel ops
def _on_subset(x: Tensor, mask: Tensor, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``fn(x[idx], idx)`` for the images where the CPU bool ``mask`` is set, the others untouched
    (no device sync: the indices are known on the CPU)."""
    idx = mask.nonzero().flatten()
    if len(idx) == 0:
        return x
    if len(idx) == len(mask):
        return fn(x, idx)
    on_device = idx.to(x.device)
    return x.index_copy(0, on_device, fn(x.index_select(0, on_device), idx))


@functools.lru_cache(maxsize=4096)
def _taps(n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`~.augment._area_upscale_taps`, cached: only a few hundred crop sizes occur."""
    return _area_upscale_taps(n_in, n_out)


def _crop_taps(start: Tensor, length: Tensor, n_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image INTER_AREA taps along one axis, as absolute source indices: (B, n_out) each."""
    taps = [_taps(int(m), n_out) for m in length.tolist()]
    i0, i1, f = (torch.stack([t[j] for t in taps]) for j in range(3))
    return (i0 + start[:, None]).to(device), (i1 + start[:, None]).to(device), f.to(device)


def crop_resize(x: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """Each image's crop ``[top:top+height, left:left+width]`` enlarged back to the full size like
    :func:`~.augment.resize_area_up` (same float64 blend order, so the same uint8 result)."""
    n, c, h, w = x.shape
    y0, y1, fy = _crop_taps(top, height, h, x.device)
    x0, x1, fx = _crop_taps(left, width, w, x.device)
    fy, fx = fy[:, None, :, None], fx[:, None, None, :]

    def rows(i: Tensor) -> Tensor:  # gathered as uint8 (4x less memory traffic), blended in float64
        return x.gather(2, i[:, None, :, None].expand(n, c, h, w))

    def cols(r: Tensor, i: Tensor) -> Tensor:
        return r.gather(3, i[:, None, None, :].expand(n, c, h, w)).to(torch.float64)

    r0, r1 = rows(y0), rows(y1)
    top_ = cols(r0, x0) * (1 - fx) + cols(r0, x1) * fx
    bot_ = cols(r1, x0) * (1 - fx) + cols(r1, x1) * fx
    return _to_uint8(top_ * (1 - fy) + bot_ * fy, "round")


def warp_affine_batch(x: Tensor, inverse: Tensor, nearest: bool, fill: Tensor) -> Tensor:
    """:func:`~.augment.warp_affine` for a batch sharing the interpolation: ``inverse`` (B, 3, 3)
    float64 inverse matrices, ``fill`` (B, C) per-channel constants."""
    n, c, h, w = x.shape
    inv = inverse.to(x.device)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=x.device) + 0.5,
                            torch.arange(w, dtype=torch.float64, device=x.device) + 0.5, indexing="ij")

    def m(r: int, k: int) -> Tensor:
        return inv[:, r, k, None, None]

    src_x = m(0, 0) * xs + m(0, 1) * ys + m(0, 2)
    src_y = m(1, 0) * xs + m(1, 1) * ys + m(1, 2)
    if not nearest:  # cv2's 1/32-pixel grid for bilinear, as warp_affine
        src_x = torch.floor((src_x - 0.5) * 32 + 0.5) / 32 + 0.5
        src_y = torch.floor((src_y - 0.5) * 32 + 0.5) / 32 + 0.5
    grid = torch.stack([2 * src_x / w - 1, 2 * src_y / h - 1], dim=-1).float()
    f = fill.to(device=x.device, dtype=torch.float32)[:, :, None, None]
    out = TF.grid_sample(x.float() - f, grid, mode="nearest" if nearest else "bilinear", padding_mode="zeros",
                         align_corners=False) + f
    return _to_uint8(out, "round")


def gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """(B, size, size) float32 Gaussian kernels, built as torchvision's ``gaussian_blur_image``
    builds its one kernel (softmax over a linspace), so the weights are the same floats."""
    lim = (size - 1) / (2.0 * math.sqrt(2.0))
    pos = torch.linspace(-lim, lim, steps=size, dtype=torch.float32)
    k1 = torch.softmax(pos.div(sigma.float()[:, None]).pow(2).neg(), dim=-1)
    return k1[:, :, None] * k1[:, None, :]


def blur_batch(x: Tensor, sigma: Tensor, size: int) -> Tensor:
    """Per-image Gaussian blur with one kernel ``size`` for the batch (reflect-101 borders), as a
    grouped convolution: one group per image and channel."""
    n, c, h, w = x.shape
    weight = gaussian_kernels(sigma, size).repeat_interleave(c, dim=0)[:, None].to(x.device)
    pad = size // 2
    padded = TF.pad(x.float(), [pad, pad, pad, pad], mode="reflect")
    out = TF.conv2d(padded.reshape(1, n * c, h + 2 * pad, w + 2 * pad), weight, groups=n * c)
    return _to_uint8(out.reshape(n, c, h, w), "round")


def gain_batch(x: Tensor, gain: Tensor, pivot: float) -> Tensor:
    """``pivot + gain (v - pivot)`` truncated (imgaug's LUT), one float32 gain per image."""
    g = gain.to(device=x.device, dtype=torch.float32)[:, None, None, None]
    return _to_uint8(pivot + g * (x.float() - pivot), "floor")


def add_batch(x: Tensor, offset: Tensor) -> Tensor:
    """``v + offset`` rounded, ``offset`` (B, C) in pixel levels."""
    o = offset[:, :x.shape[1]].to(device=x.device, dtype=torch.float32)[:, :, None, None]
    return _to_uint8(x.float() + o, "round")


def noise_batch(x: Tensor, field: Tensor, std: Tensor) -> Tensor:
    """``v + round(field * std)`` rounded; ``field`` (B, 1, H, W) is shared by the channels."""
    s = std.to(device=x.device, dtype=torch.float32)[:, None, None, None]
    return _to_uint8(x.float() + (field.to(x.device) * s).round(), "round")


# -------------------------------------------------------------------------------- the class
class BatchAugmentation:
    """ST's augmentation (``cfg``: the same :class:`~.augment.Augmentation` as the per-image one)
    of a uint8 batch on its own device.

    ``aug(images, boxes, labels, generator=None, order_seed=None)`` draws one op order and per-image
    parameters, and returns ``{"images": float (B, 3, H, W) in [-1, 1], "boxes": [normalized xyxy
    per image], "labels": [...], "boxes_dropped": int tensor}`` with what
    :class:`~.data.DetectionSamples` + :class:`~.data.DetectionCollate` would give for those draws
    (images left without boxes are kept: dropping them is the caller's choice).
    """

    def __init__(self, cfg: Augmentation, cpu_chunk: int = 8):
        #: On the CPU the pixels go through all ops ``cpu_chunk`` images at a time: whole-batch
        #: temporaries (38 MB per float32 copy at 64 x 224^2) miss the caches and are fresh mmaps each
        #: time, which made the CPU path 2-7x slower per op. On an accelerator the batch goes whole.
        self.cfg, self.cpu_chunk = cfg, int(cpu_chunk)
        self.ops = build_ops(cfg)
        kinds = [op_kind(op) for op in self.ops]
        #: ``kinds[k]``: the kind of ``ops[k]`` (order indices refer to this list, as in STAugmentation).
        self.kinds = [k for k, _, _ in kinds]
        self.image_ops = [op for _, op, _ in kinds]
        self.probabilities = [p for _, _, p in kinds]

    def order(self, order_seed: Optional[int] = None, generator: Optional[torch.Generator] = None) -> list[int]:
        """The batch's op order: :meth:`STAugmentation.order <.augment.STAugmentation.order>`'s rule."""
        n = len(self.ops)
        if not self.cfg.random_order or n < 2:
            return list(range(n))
        if order_seed is not None:
            return order_from_seed(order_seed, n)
        return torch.randperm(n, generator=generator).tolist()

    def sample_params(self, batch_size: int, height: int, width: int, generator: Optional[torch.Generator] = None,
                      device: torch.device | str = "cpu") -> BatchParams:
        """Per-image draws for every op, on the CPU (``generator``: a CPU generator, or None for the
        global RNG), and the noise field on ``device``."""
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"sample_params needs a CPU generator, got one on {generator.device}")
        draws = {}
        for kind, op, p in zip(self.kinds, self.image_ops, self.probabilities):
            draws[kind] = draw_op(kind, op, p, batch_size, height, width, generator)
        if "noise" in draws:
            draws["noise"]["field"] = _normal_field((batch_size, 1, height, width), generator, torch.device(device))
        return BatchParams((height, width), draws)

    # ---------------------------------------------------------------------------- pixels
    def augment_pixels(self, images: Tensor, params: BatchParams, order: Sequence[int]) -> Tensor:
        """The uint8 batch after the ops of ``order``, each on all images at once."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"BatchAugmentation expects a uint8 (B, C, H, W) batch, got {images.dtype} "
                            f"{tuple(images.shape)}")
        if tuple(images.shape[-2:]) != tuple(params.size) or params.draws and params.batch_size != len(images):
            raise ValueError(f"params were drawn for {params.batch_size} images of {params.size}, the batch is "
                             f"{len(images)} of {tuple(images.shape[-2:])}")
        n = len(images)
        step = self.cpu_chunk if images.device.type == "cpu" and self.cpu_chunk > 0 else max(n, 1)
        chunks = []
        for start in range(0, n, step):
            x, p = images[start:start + step], params.slice(start, start + step) if step < n else params
            for k in order:
                x = self._pixels(self.kinds[k], self.image_ops[k], x, p.draws[self.kinds[k]])
            chunks.append(x)
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    @staticmethod
    def _pixels(kind: str, op: v2.Transform, x: Tensor, d: dict[str, Tensor]) -> Tensor:
        if kind in ("hflip", "vflip"):
            dim = -1 if kind == "hflip" else -2
            return _on_subset(x, d["apply"], lambda s, i: s.flip(dim))
        if kind == "crop":
            return _on_subset(x, d["apply"], lambda s, i: crop_resize(s, d["top"][i], d["left"][i], d["height"][i],
                                                                      d["width"][i]))
        if kind == "affine":
            c = x.shape[1]
            for nearest in (True, False):
                x = _on_subset(x, d["apply"] & (d["nearest"] == nearest), lambda s, i: warp_affine_batch(
                    s, torch.stack([torch.linalg.inv(m) for m in d["matrix"][i]]), nearest, d["fill"][i, :c]))
            return x
        if kind in ("multiply", "contrast"):
            return gain_batch(x, d["gain"], op.pivot)
        if kind == "blur":
            return _blur(op, x, d["sigma"])
        if kind == "noise":
            return noise_batch(x, d["field"], d["std"])
        if kind == "add":
            return add_batch(x, d["offset"])
        raise KeyError(kind)

    # ----------------------------------------------------------------------------- boxes
    def augment_boxes(self, boxes: Sequence[Tensor], params: BatchParams, order: Sequence[int]) -> list[Tensor]:
        """Pixel xyxy float32 boxes (CPU) through the geometric ops of ``order``, per image with the
        per-image ops' own box code (float64 inside each op, float32 between, as ``_Op.transform``)."""
        out = []
        for i, b in enumerate(boxes):
            p = params.for_image(i)
            for k in order:
                kind = self.kinds[k]
                if kind in GEOMETRIC and p[kind] is not None and len(b):
                    b = self.image_ops[k].boxes(b.to(torch.float64), p[kind], params.size).to(torch.float32)
            out.append(b)
        return out

    # -------------------------------------------------------------------------- together
    def apply(self, images: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor], params: BatchParams,
              order: Sequence[int]) -> dict[str, Any]:
        """The batch augmented with the given draws and op order (see the class docstring)."""
        if not len(boxes) == len(labels) == len(images):
            raise ValueError(f"{len(images)} images, {len(boxes)} box tensors, {len(labels)} label tensors")
        device = images.device
        height, width = images.shape[-2:]
        pixels = self.augment_pixels(images, params, order)  # queued first: the box loop overlaps it
        counts = [len(b) for b in boxes]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        flat = torch.cat([b.reshape(-1, 4) for b in boxes]).to("cpu", torch.float32) * scale
        moved = self.augment_boxes(flat.split(counts), params, order)
        keep, clipped = finish_boxes(torch.cat(moved), height, width, self.cfg.min_box_size)
        kept = (clipped[keep] / scale).to(device)
        kept_labels = torch.cat([lab.reshape(-1) for lab in labels]).to("cpu")[keep].to(device)
        per_image = [int(k.sum()) for k in keep.split(counts)]
        return {"images": pixels.float() / 255.0 * 2.0 - 1.0,
                "boxes": list(kept.split(per_image)), "labels": list(kept_labels.split(per_image)),
                "boxes_dropped": torch.tensor(len(keep) - sum(per_image), device=device)}

    def __call__(self, images: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor],
                 generator: Optional[torch.Generator] = None, order_seed: Optional[int] = None) -> dict[str, Any]:
        order = self.order(order_seed, generator)
        params = self.sample_params(len(images), images.shape[-2], images.shape[-1], generator, images.device)
        return self.apply(images, boxes, labels, params, order)


def _blur(op: RandomGaussianBlur, x: Tensor, sigma: Tensor) -> Tensor:
    """Blur images with sigma > ``op.eps``, grouped by kernel size (a few sizes: 5, 7, 9 for sigma < 3)."""
    height, width = x.shape[-2:]
    size = torch.tensor([st_blur_kernel_size(s) if s > op.eps else 0 for s in sigma.tolist()])
    for k in size.unique().tolist():
        if k == 0:
            continue
        if k // 2 >= min(height, width):  # tiny images: the per-image op's own kernel shrinking
            x = _on_subset(x, size == k, lambda s, i: torch.stack(
                [op.image(img, {"sigma": float(sigma[j])}) for img, j in zip(s, i.tolist())]))
        else:
            x = _on_subset(x, size == k, lambda s, i: blur_batch(s, sigma[i], k))
    return x
