"""A procedurally generated person-like dataset, so training runs with no download.

Each image is a smooth noisy background with non-person clutter (blobs, bars) and one to three
upright figures (head, torso, arms, legs) in random clothing colours and sizes. The task is easy
enough to learn from scratch on a CPU in minutes and hard enough that an untrained detector
scores near zero, which is what the quickstart needs to show training working. Images are
generated on the fly from ``(seed, index)``: the dataset is deterministic and costs no disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..data.datasets import Record

SKIN = ((241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    fine = rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float64) + fine, 0, 255).astype(np.uint8))


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    for _ in range(int(rng.integers(1, 6))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, size, 2)
        if rng.random() < 0.5:  # round blob
            r = rng.uniform(0.04, 0.15) * size
            draw.ellipse([x - r, y - r * rng.uniform(0.6, 1.0), x + r, y + r], fill=color)
        else:  # wide bar (never upright and person-shaped)
            w, h = rng.uniform(0.15, 0.5) * size, rng.uniform(0.03, 0.1) * size
            draw.rectangle([x - w / 2, y - h / 2, x + w / 2, y + h / 2], fill=color)


def _person(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x0: float, y0: float, h: float) -> None:
    """Draw an upright figure whose bounding box is ``(x0, y0, x0 + 0.42 h, y0 + h)``."""
    w = 0.42 * h
    cx = x0 + w / 2
    skin = SKIN[int(rng.integers(len(SKIN)))]
    shirt = tuple(int(c) for c in rng.integers(0, 256, 3))
    pants = tuple(int(c) for c in rng.integers(0, 200, 3))
    head_r = 0.09 * h
    # legs (slightly apart, from hip to feet)
    leg_w = 0.11 * w * 1.6
    spread = rng.uniform(0.02, 0.12) * w
    for side in (-1, 1):
        lx = cx + side * (leg_w / 2 + spread / 2)
        draw.rectangle([lx - leg_w / 2, y0 + 0.55 * h, lx + leg_w / 2, y0 + h], fill=pants)
    # arms hang from the shoulders down to the hips; they set the box width
    arm_w = 0.13 * w
    for side in (-1, 1):
        ax = cx + side * (w / 2 - arm_w / 2)
        draw.rectangle([ax - arm_w / 2, y0 + 0.22 * h, ax + arm_w / 2, y0 + 0.58 * h], fill=shirt)
        draw.ellipse([ax - arm_w / 2, y0 + 0.55 * h, ax + arm_w / 2, y0 + 0.62 * h], fill=skin)
    torso_w = w - 2 * arm_w
    draw.rounded_rectangle([cx - torso_w / 2, y0 + 0.2 * h, cx + torso_w / 2, y0 + 0.6 * h],
                           radius=0.05 * h, fill=shirt)
    draw.ellipse([cx - head_r, y0, cx + head_r, y0 + 2 * head_r], fill=skin)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def scene_boxes(seed: int, index: int, size: int = 256, max_people: int = 3) -> np.ndarray:
    """Person boxes (pixels x1, y1, x2, y2) of a scene, from its own layout stream: the dataset
    knows every image's ground truth without painting the images."""
    rng = np.random.default_rng([seed, index, 0])
    boxes: list[tuple] = []
    for _ in range(int(rng.integers(1, max_people + 1))):
        for _attempt in range(10):
            h = rng.uniform(0.25, 0.85) * size
            x0, y0 = rng.uniform(0, size - 0.42 * h), rng.uniform(0, size - h)
            box = (x0, y0, x0 + 0.42 * h, y0 + h)
            if all(_iou(box, b) < 0.2 for b in boxes):
                boxes.append(box)
                break
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def render_scene(seed: int, index: int, size: int = 256, max_people: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 HWC RGB) and its person boxes (normalized x1, y1, x2, y2)."""
    boxes = scene_boxes(seed, index, size, max_people)
    rng = np.random.default_rng([seed, index, 1])  # the paint stream: background, clutter, clothes
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, size)
    for x0, y0, _x1, y1 in boxes:
        _person(draw, rng, x0, y0, y1 - y0)
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 1.0))))
    return np.asarray(img, dtype=np.uint8), boxes.astype(np.float32) / size


class SyntheticPersons:
    """``dataset[i]`` is ``(uint8 HWC image, Record)`` like :class:`~ssd_mnv1.data.DetectionDataset`."""

    layout = "synthetic"
    class_names = ["person"]

    def __init__(self, num_images: int, seed: int = 0, size: int = 256):
        if num_images < 1:
            raise ValueError(f"a synthetic dataset needs at least one image, got {num_images}")
        self.num_images, self.seed, self.size = int(num_images), int(seed), int(size)
        self.records = [self._record(i) for i in range(self.num_images)]
        self.skipped: dict[str, int] = {}

    def _record(self, i: int) -> Record:
        boxes = (scene_boxes(self.seed, i, self.size) / self.size).astype(np.float32)
        n = len(boxes)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * self.size ** 2
        return Record(i, Path(f"<synthetic seed={self.seed} #{i}>"), self.size, self.size, boxes,
                      np.ones(n, np.int64), np.zeros(n, bool), areas.astype(np.float32))

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> tuple[np.ndarray, Record]:
        image, _ = render_scene(self.seed, i, self.size)
        return image, self.records[i]

    def fingerprint(self) -> list:
        """What the pixels depend on (for :mod:`ssd_mnv1.data.cache`): this generator's code and parameters."""
        from ..data.cache import source_fingerprint

        return ["synthetic", source_fingerprint(SyntheticPersons), self.num_images, self.seed, self.size]

    def describe(self) -> str:
        boxes = sum(len(r.labels) for r in self.records)
        return f"synthetic persons (seed {self.seed}): {self.num_images} images, {boxes} boxes"
