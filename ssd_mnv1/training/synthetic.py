"""A procedurally generated person-like dataset, so training runs with no download.

Each image is a smooth noisy background with non-person clutter (blobs, bars) and one to three
upright figures (head, torso, arms, legs) in random clothing colours and sizes. The task is easy
enough to learn from scratch on a CPU in minutes and hard enough that an untrained detector
scores near zero, which is what the quickstart needs to show training working. Images are
generated on the fly from ``(seed, index)``: the dataset is deterministic and costs no disk.

A multi-class variant (:func:`render_objects`, :func:`write_synthetic_dataset`) draws objects of
the :data:`SHAPES` classes on the same backgrounds and clutter and writes them to disk in the COCO
and/or YOLO layouts that :func:`ssd_mnv1.data.open_dataset` reads, so that a multi-class detector
can be trained, evaluated and exported through the ordinary dataset path in minutes on a CPU.
The shapes differ from each other and from the clutter (round blobs, wide bars) by outline, not
colour: every colour is random. The person-only functions above it are unchanged by it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..data.datasets import Record
from ..fileio import atomic_folder, output_folder

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


# ------------------------------------------------------------------------------ multi-class shapes


def _color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _contrast(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """A darker or lighter shade of ``color``: borders and marks stay visible whatever the fill."""
    if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 128:
        return tuple(int(c * 0.3) for c in color)
    return tuple(int(c + (255 - c) * 0.7) for c in color)


def _draw_person(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x0, y0, x1, y1) -> None:
    _person(draw, rng, x0, y0, y1 - y0)


def _draw_sign(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x0, y0, x1, y1) -> None:
    """A warning sign: an upright triangle with a thick border (no clutter has a corner on top)."""
    face = _color(rng)
    corners = np.array([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)])
    draw.polygon([tuple(c) for c in corners], fill=_contrast(face))
    # the face: the triangle shrunk about its incentre, so the border has the same width on all sides
    sides = np.array([np.linalg.norm(corners[(i + 1) % 3] - corners[(i + 2) % 3]) for i in range(3)])
    centre = (sides[:, None] * corners).sum(0) / sides.sum()
    inradius = (x1 - x0) * (y1 - y0) / sides.sum()
    scale = max(0.0, 1 - 0.14 * (x1 - x0) / inradius / 2)
    draw.polygon([tuple(centre + scale * (c - centre)) for c in corners], fill=face)


def _draw_crate(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x0, y0, x1, y1) -> None:
    """A crate: a square with a border and a cross brace (clutter bars are wide and plain)."""
    wood = _color(rng)
    frame = _contrast(wood)
    t = max(2.0, 0.1 * (x1 - x0))
    draw.rectangle([x0, y0, x1, y1], fill=frame)
    draw.rectangle([x0 + t, y0 + t, x1 - t, y1 - t], fill=wood)
    for a, b in (((x0 + t, y0 + t), (x1 - t, y1 - t)), ((x0 + t, y1 - t), (x1 - t, y0 + t))):
        draw.line([a, b], fill=frame, width=int(round(t)))


def _draw_wheel(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x0, y0, x1, y1) -> None:
    """A wheel: a thick ring and a hub, the background showing through (clutter blobs are solid)."""
    tire = _color(rng)
    draw.ellipse([x0, y0, x1, y1], outline=tire, width=max(2, int(round(0.1 * (x1 - x0)))))
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, 0.12 * (x1 - x0)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_contrast(tire))


#: Class name -> (width / height of its box, drawing function); every name can be a class.
SHAPES = {
    "person": (0.42, _draw_person),
    "sign": (1 / 0.87, _draw_sign),
    "crate": (1.0, _draw_crate),
    "wheel": (1.0, _draw_wheel),
}
#: Object size: the longer box side as a fraction of the image side.
OBJECT_SIZE = (0.15, 0.70)
LAYOUTS = ("coco", "yolo", "both")


def check_shape_names(class_names: Sequence[str] | str, option: str = "class_names") -> list[str]:
    """The names as a list; an unknown or repeated name is a ValueError naming ``option``."""
    names = [class_names] if isinstance(class_names, str) else list(class_names)
    if not names:
        raise ValueError(f"{option}: give at least one class; available shapes: {', '.join(SHAPES)}")
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ValueError(f"{option}: unknown shape(s) {', '.join(map(repr, unknown))}; available shapes: "
                         f"{', '.join(SHAPES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{option}: repeated class name(s) in {names}")
    return names


def _covered(a, b) -> float:
    """The fraction of the smaller box that the other covers: IoU alone lets a small box sit inside a big one."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _object_layout(seed: int, index: int, names: list[str], size: int, max_objects: int):
    """Nominal boxes, 0-based class indices and the blur radius, from the scene's layout stream."""
    rng = np.random.default_rng([seed, index, 2])
    boxes: list[tuple] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(len(names)))
        aspect = SHAPES[names[cls]][0]
        for _attempt in range(20):
            side = rng.uniform(*OBJECT_SIZE) * size
            w, h = (side, side / aspect) if aspect >= 1 else (side * aspect, side)
            x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
            box = (x0, y0, x0 + w, y0 + h)
            if all(_iou(box, b) < 0.2 and _covered(box, b) < 0.15 for b in boxes):
                boxes.append(box)
                classes.append(cls)
                break
    return boxes, classes, float(rng.uniform(0, 0.8))


def _render_objects(seed: int, index: int, names: list[str], size: int, max_objects: int,
                    draw_objects: bool = True) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """PIL image, integer pixel boxes ``(K, 4)`` ``[x1, y1, x2, y2)`` and 0-based classes.

    Each object is drawn on its own transparent layer and its box is that layer's opaque extent, so
    boxes are tight to the pixel whatever the shape. ``draw_objects=False`` gives the same scene
    without them (for tests).
    """
    nominal, classes, blur = _object_layout(seed, index, names, size, max_objects)
    paint = np.random.default_rng([seed, index, 3])
    img = _background(paint, size)
    _clutter(ImageDraw.Draw(img), paint, size)
    boxes = []
    for (x0, y0, x1, y1), cls in zip(nominal, classes):
        layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        SHAPES[names[cls]][1](ImageDraw.Draw(layer), paint, x0, y0, x1, y1)
        boxes.append(layer.getchannel("A").getbbox())
        if draw_objects:
            img.paste(layer, (0, 0), layer)
    img = img.filter(ImageFilter.GaussianBlur(radius=blur))
    return img, np.asarray(boxes, np.int64).reshape(-1, 4), np.asarray(classes, np.int64)


def render_objects(seed: int, index: int, class_names: Sequence[str], size: int = 320,
                   max_objects: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (uint8 HWC RGB) with 1..``max_objects`` objects of random classes, their boxes
    (normalized x1, y1, x2, y2, tight) and 1-based labels (position in ``class_names`` + 1)."""
    names = check_shape_names(class_names)
    img, boxes, classes = _render_objects(seed, index, names, size, max_objects)
    return np.asarray(img, np.uint8), boxes.astype(np.float32) / size, classes + 1


# ------------------------------------------------------------------------------------- to disk

#: What a folder written by :func:`write_synthetic_dataset` holds at its top level: only such a
#: folder is replaced by ``overwrite`` (never a folder with anything else in it).
_OUTPUT_ENTRIES = {"annotations.json", "images", "labels", "coco", "yolo"}


def check_output_folder(out: str | os.PathLike, overwrite: bool, option: str = "out") -> Path:
    """``out`` if it may be written: absent, empty, or (with ``overwrite``) an earlier output."""
    out = output_folder(out, option)
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    foreign = [e for e in entries if e not in _OUTPUT_ENTRIES]
    if foreign:
        raise ValueError(f"{option} {out}: folder is not empty (holds {foreign[0]!r}, which a synthetic dataset "
                         "does not write); choose a new or empty folder")
    if entries and not overwrite:
        how = "--overwrite" if option.startswith("--") else "overwrite=True"
        raise ValueError(f"{option} {out}: folder holds an earlier dataset; pass {how} to replace it")
    return out


_PARAMETERS = ("out", "class_names", "num_images", "size", "layout", "max_objects")


def check_request(out: str | os.PathLike, class_names: Sequence[str] | str, num_images: int, size: int = 320,
                  layout: str = "coco", *, max_objects: int = 4, overwrite: bool = False,
                  names: Mapping[str, str] | None = None) -> tuple[Path, list[str]]:
    """The output folder and class names of a :func:`write_synthetic_dataset` call, checked before
    anything is drawn. Each error names the argument at fault as ``names`` spells it (parameter ->
    name; by default the parameter's own name: a command passes its options)."""
    names = {**{key: key for key in _PARAMETERS}, **(names or {})}
    classes = check_shape_names(class_names, names["class_names"])
    for key, value, least in (("num_images", num_images, 1), ("size", size, 64), ("max_objects", max_objects, 1)):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"{names[key]} must be a whole number, got {value!r}")
        if value < least:
            raise ValueError(f"{names[key]} must be at least {least}, got {value}")
    if layout not in LAYOUTS:
        raise ValueError(f"{names['layout']} must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return check_output_folder(out, overwrite, names["out"]), classes


def write_synthetic_dataset(out: str | os.PathLike, class_names: Sequence[str], num_images: int, seed: int = 0,
                            size: int = 320, layout: str = "coco", *, max_objects: int = 4,
                            overwrite: bool = False, progress: bool = True,
                            names: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write ``num_images`` scenes of :func:`render_objects` as a dataset; return layout -> folder.

    ``layout='coco'``: ``out/annotations.json`` + ``out/images/NNNNNN.jpg`` (category ids 1..C in
    ``class_names`` order); ``'yolo'``: ST's ``out/images/`` + ``out/labels/NNNNNN.txt`` (class ids
    0..C-1, lines by :func:`ssd_mnv1.data.writer.yolo_line`); ``'both'``: ``out/coco/`` and
    ``out/yolo/`` as ``prepare_data`` writes them (YOLO images hard-linked to the COCO ones), through
    :class:`ssd_mnv1.data.writer.DatasetWriter`. Both hold the same integer pixel boxes. JPEG
    quality 95; the folder appears only when complete. The arguments are checked first
    (:func:`check_request`, whose errors name them as ``names`` spells them).
    """
    from ..data.writer import DatasetWriter, yolo_line
    from ..progress import progress as progress_bar

    out, classes = check_request(out, class_names, num_images, size, layout, max_objects=max_objects,
                                 overwrite=overwrite, names=names)
    layouts = ["coco", "yolo"] if layout == "both" else [layout]
    images, annotations = [], []
    with atomic_folder(out) as tmp:
        writer = DatasetWriter({name: (tmp / name if layout == "both" else tmp) for name in layouts})
        for i in progress_bar(range(int(num_images)), desc=f"synthetic {'/'.join(classes)} -> {out}", unit="img",
                              disable=not progress):
            img, boxes, labels = _render_objects(seed, i, classes, size, max_objects)
            file_name = f"{i:06d}.jpg"
            writer.add_image(file_name, lambda path: img.save(path, "JPEG", quality=95))
            xywh = [[int(x1), int(y1), int(x2 - x1), int(y2 - y1)] for x1, y1, x2, y2 in boxes]
            images.append({"id": i + 1, "file_name": file_name, "width": size, "height": size})
            for box, cls in zip(xywh, labels):
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                                    "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
            if "yolo" in layouts:
                writer.add_labels(file_name, (yolo_line(int(cls), box, size, size)[0]
                                              for box, cls in zip(xywh, labels)))
        if "coco" in layouts:
            writer.write_coco({"info": {"description": "ssd_mnv1 synthetic shapes", "seed": seed, "size": size,
                                        "classes": classes},
                               "licenses": [], "images": images, "annotations": annotations,
                               "categories": [{"id": k, "name": n, "supercategory": "shape"}
                                              for k, n in enumerate(classes, 1)]})
    return {name: (out / name if layout == "both" else out) for name in layouts}


def box_counts(root: str | os.PathLike, class_names: Sequence[str]) -> Counter:
    """Boxes per class name of the dataset at ``root`` (as :func:`ssd_mnv1.data.open_dataset` reads it)."""
    from ..data import open_dataset

    dataset = open_dataset(root, class_names=list(class_names))
    return Counter(class_names[int(label) - 1] for r in dataset.records for label in r.labels)
