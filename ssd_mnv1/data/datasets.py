"""Detection datasets in the two layouts used with ST's model: COCO json and ST's YOLO-Darknet.

Both readers produce the same :class:`Record` list (boxes as normalized ``x1, y1, x2, y2``,
1-based labels) and are lazy: opening a set reads annotations and, for YOLO, image headers only;
pixels are decoded in :meth:`DetectionDataset.__getitem__` by :func:`ssd_mnv1.preprocess.load_image`.

Policies (kept identical in both readers and in :mod:`ssd_mnv1.data.prepare`):

* Crowd boxes (``iscrowd=1``) are kept as ordinary ground truth, as ST's converter does; the flag
  is carried so COCO metrics can treat them as ignore regions.
* Images without a box of the chosen classes are dropped (ST's converter copies only images with
  at least one object) unless ``keep_empty``; they are counted in ``skipped``.
* COCO: a box with width or height <= 0 is **skipped** (counted in ``skipped['bad_bbox']`` and
  reported by one warning), boxes are clipped to the image; a box that lies entirely outside the
  image is skipped too (``skipped['bbox_outside_image']``). Anything structurally wrong (missing
  key, unknown image id, non-numeric bbox, duplicate image id, missing image file) is a
  ``ValueError`` naming the file and the field.
* YOLO: every malformed line is a ``ValueError`` with ``file:line``. ``cx cy w h`` must lie in
  [0, 1]; values outside by at most ``YOLO_TOLERANCE`` (1e-6, rounding of 6-decimal files) are
  clipped. A box whose centre and size are valid but that overhangs an image edge is clipped to
  the image (ST's converter writes COCO boxes unclipped).
* ``skipped`` reasons: ``no_boxes`` (image without a box of the chosen classes), ``no_label_file``
  (YOLO image without its .txt), ``bad_bbox``, ``bbox_outside_image``, ``orphan_label_file``
  (YOLO .txt without an image, ignored). Only things actually left out are counted.
* Every reason but ``no_boxes`` (by design: ST's sets have no empty images) is also reported by
  one warning with its count and up to three examples. A set left with no image at all is a
  ``ValueError`` listing the skipped counts.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ..preprocess import IMAGE_SUFFIXES, image_error, is_image_file, load_image, pil_to_rgb

YOLO_TOLERANCE = 1e-6
#: EXIF orientations that swap width and height (transpose, rotate 270, transverse, rotate 90).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass
class Record:
    """One image and its boxes; boxes are normalized ``x1, y1, x2, y2`` of the displayed image."""

    image_id: int
    file: Path
    width: int
    height: int
    boxes: np.ndarray    # (K, 4) float32
    labels: np.ndarray   # (K,) int64, 1-based (0 = background)
    iscrowd: np.ndarray  # (K,) bool
    areas: np.ndarray    # (K,) float32 pixels

    @classmethod
    def empty(cls, image_id: int, file: Path, width: int, height: int) -> "Record":
        return cls(image_id, Path(file), int(width), int(height), np.zeros((0, 4), np.float32),
                   np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.float32))


class DetectionDataset(torch.utils.data.Dataset):
    """A list of :class:`Record`; ``dataset[i]`` is ``(uint8 HWC RGB image, record)``."""

    def __init__(self, root: str | os.PathLike, layout: str, class_names: Sequence[str],
                 records: list[Record], skipped: dict[str, int] | None = None):
        if layout not in ("coco", "yolo"):
            raise ValueError(f"unknown layout {layout!r}: expected 'coco' or 'yolo'")
        self.root = Path(root)
        self.layout = layout
        self.class_names = list(class_names)
        self.records = records
        self.skipped = {k: v for k, v in (skipped or {}).items() if v}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[np.ndarray, Record]:
        rec = self.records[i]
        image = load_image(rec.file)
        if image.shape[:2] != (rec.height, rec.width):
            image = self._fix_size(rec, image)
        return image, rec

    def _fix_size(self, rec: Record, image: np.ndarray) -> np.ndarray:
        # A COCO json gives the size of the stored pixel grid, which is what its boxes refer to.
        # If the file carries an EXIF rotation, load_image returns the rotated image: fall back to
        # the stored pixels so that image and boxes agree.
        if self.layout == "coco" and image.shape[:2] == (rec.width, rec.height):
            with Image.open(rec.file) as im:
                raw = pil_to_rgb(im)
            if raw.shape[:2] == (rec.height, rec.width):
                return raw
        where = f"its images entry (id {rec.image_id})" if self.layout == "coco" else "the annotations"
        raise ValueError(f"{rec.file}: decoded image is {image.shape[1]}x{image.shape[0]} but {where} "
                         f"says {rec.width}x{rec.height}")

    # ------------------------------------------------------------------------------ summary
    @property
    def num_boxes(self) -> int:
        return int(sum(len(r.labels) for r in self.records))

    @property
    def num_crowd(self) -> int:
        return int(sum(int(r.iscrowd.sum()) for r in self.records))

    def describe(self) -> str:
        """One line: layout, root, images, boxes (crowd) and what was skipped."""
        text = (f"{self.layout} dataset {self.root}: {len(self)} images, {self.num_boxes} boxes "
                f"({self.num_crowd} crowd), classes {', '.join(self.class_names)}")
        if self.skipped:
            text += "; skipped " + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
        return text

    def __repr__(self) -> str:
        return f"DetectionDataset({self.describe()})"


# ----------------------------------------------------------------------------------- helpers


def _check_class_names(class_names: Iterable[str]) -> list[str]:
    names = [class_names] if isinstance(class_names, str) else list(class_names)
    if not names:
        raise ValueError("class_names is empty: give at least one class name")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {names}")
    return names


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` as displayed (EXIF orientation applied) from the header only."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            try:
                # The base-class getexif reads what the header parse found; PNG's override would
                # decode the whole file to look for an eXIf chunk after the pixel data.
                orientation = Image.Image.getexif(im).get(0x0112)
            except Exception:  # a broken EXIF block: PIL's exif_transpose would ignore it too
                orientation = None
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise image_error(path, exc) from None
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return int(width), int(height)


def _check_not_empty(source: Path, records: list, names: list[str], skipped: dict[str, int],
                     keep_empty: bool) -> None:
    """An empty dataset is an error: nothing could be evaluated or trained on."""
    if records:
        return
    counts = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items()) if v)
    if not counts:
        raise ValueError(f"{source}: dataset is empty: it lists no images")
    which = "no image left" if keep_empty else f"no image with a box of class {', '.join(map(repr, names))}"
    raise ValueError(f"{source}: dataset is empty: {which} (skipped: {counts})")


def _stack(boxes: list, labels: list, crowd: list, areas: list):
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
            np.asarray(crowd, bool), np.asarray(areas, np.float32))


# -------------------------------------------------------------------------------------- COCO


def _require(obj, key: str, where: str, json_path: Path):
    if not isinstance(obj, dict):
        raise ValueError(f"{json_path}: {where} is not an object")
    if key not in obj:
        raise ValueError(f"{json_path}: {where} has no '{key}'")
    return obj[key]


def load_coco_json(json_path: str | os.PathLike) -> dict:
    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path}: no such COCO annotation file")
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{json_path}: not valid JSON ({exc})") from None
    check_coco_structure(data, json_path)
    return data


def check_coco_structure(data, json_path) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{json_path}: top level is not a JSON object")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{json_path}: missing key '{key}' (a COCO file needs images, annotations "
                             "and categories)")
        if not isinstance(data[key], list):
            raise ValueError(f"{json_path}: '{key}' is not a list")


def coco_category_labels(data: dict, class_names: Sequence[str], json_path) -> dict[int, int]:
    """COCO category id -> 1-based label (position in ``class_names`` + 1)."""
    by_name: dict[str, list[int]] = {}
    for i, cat in enumerate(data["categories"]):
        cid = _require(cat, "id", f"categories[{i}]", json_path)
        name = _require(cat, "name", f"categories[{i}]", json_path)
        by_name.setdefault(str(name), []).append(cid)
    unknown = [n for n in class_names if n not in by_name]
    if unknown:
        available = ", ".join(sorted(by_name)) or "none"
        raise ValueError(f"{json_path}: unknown category name(s) {', '.join(map(repr, unknown))}; "
                         f"available: {available}")
    return {cid: label for label, name in enumerate(class_names, 1) for cid in by_name[name]}


def coco_bbox(ann: dict, index: int, json_path) -> tuple[float, float, float, float]:
    """Validated ``[x, y, w, h]`` of annotation ``index`` (ValueError names the annotation)."""
    bbox = _require(ann, "bbox", f"annotations[{index}]", json_path)
    where = f"annotations[{index}] (id {ann.get('id', '?')}) field 'bbox'"
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"{json_path}: {where} must be [x, y, width, height], got {bbox!r}")
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(f"{json_path}: {where} has non-numeric values {bbox!r}") from None
    if isinstance(bbox[0], bool) or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{json_path}: {where} has non-finite values {bbox!r}")
    return values  # type: ignore[return-value]


def _default_image_dir(json_path: Path) -> Path:
    images = json_path.parent / "images"
    if images.is_dir():
        return images
    # The official layout: annotations/instances_<split>.json beside <split>/.
    stem = json_path.stem
    if json_path.parent.name == "annotations" and "_" in stem:
        split_dir = json_path.parent.parent / stem.rsplit("_", 1)[1]
        if split_dir.is_dir():
            return split_dir
    return json_path.parent


def read_coco(json_path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
              class_names: Sequence[str] = ("person",), keep_empty: bool = False) -> DetectionDataset:
    """Read a COCO json; images from ``image_dir`` (default: ``images/`` beside the json, or the
    official ``annotations/instances_<split>.json`` -> ``<split>/``, or the json's folder).

    ``width``/``height`` come from the json (no pixel decoding); an image record without them is
    sized from its file header. Labels follow ``class_names`` order (first name -> label 1).
    """
    json_path = Path(json_path)
    names = _check_class_names(class_names)
    data = load_coco_json(json_path)
    image_dir = _default_image_dir(json_path) if image_dir is None else Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: image folder of {json_path} does not exist")
    labels_of = coco_category_labels(data, names, json_path)

    images: dict = {}
    order = []
    for i, img in enumerate(data["images"]):
        iid = _require(img, "id", f"images[{i}]", json_path)
        fname = _require(img, "file_name", f"images[{i}]", json_path)
        if iid in images:
            raise ValueError(f"{json_path}: images[{i}] repeats image id {iid}")
        if isinstance(iid, bool) or not isinstance(iid, int):
            raise ValueError(f"{json_path}: images[{i}] field 'id' must be an integer, got {iid!r}")
        images[iid] = img
        order.append(iid)

    per_image: dict = {iid: [] for iid in order}
    for i, ann in enumerate(data["annotations"]):
        iid = _require(ann, "image_id", f"annotations[{i}]", json_path)
        cid = _require(ann, "category_id", f"annotations[{i}]", json_path)
        if iid not in per_image:
            raise ValueError(f"{json_path}: annotations[{i}] (id {ann.get('id', '?')}) field 'image_id' "
                             f"refers to unknown image id {iid}")
        if cid in labels_of:
            per_image[iid].append((i, ann))

    listing = set(os.listdir(image_dir))
    skipped = {"no_boxes": 0, "bad_bbox": 0, "bbox_outside_image": 0}
    bad_examples: list[str] = []
    outside_examples: list[str] = []
    records = []
    for iid in order:
        img = images[iid]
        candidates = per_image[iid]
        if not candidates and not keep_empty:
            skipped["no_boxes"] += 1
            continue
        fname = str(img["file_name"])
        path = image_dir / fname
        if fname not in listing and not path.is_file():
            raise ValueError(f"{json_path}: images entry id {iid} field 'file_name': image file {path} "
                             "does not exist")
        width, height = img.get("width"), img.get("height")
        if width is None or height is None:
            width, height = image_size(path)
        for key, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{json_path}: images entry id {iid} field '{key}' must be a positive "
                                 f"number, got {value!r}")
        W, H = float(width), float(height)
        boxes, labels, crowd, areas = [], [], [], []
        for i, ann in candidates:
            x, y, w, h = coco_bbox(ann, i, json_path)
            if w <= 0 or h <= 0:
                skipped["bad_bbox"] += 1
                if len(bad_examples) < 3:
                    bad_examples.append(f"annotations[{i}] (id {ann.get('id', '?')}) bbox {ann['bbox']}")
                continue
            x1, y1 = min(max(x / W, 0.0), 1.0), min(max(y / H, 0.0), 1.0)
            x2, y2 = min(max((x + w) / W, 0.0), 1.0), min(max((y + h) / H, 0.0), 1.0)
            if x2 <= x1 or y2 <= y1:
                skipped["bbox_outside_image"] += 1
                if len(outside_examples) < 3:
                    outside_examples.append(f"annotations[{i}] (id {ann.get('id', '?')}) bbox {ann['bbox']} "
                                            f"in a {width}x{height} image")
                continue
            boxes.append((x1, y1, x2, y2))
            labels.append(labels_of[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
            area = ann.get("area")
            areas.append(float(area) if isinstance(area, (int, float)) and not isinstance(area, bool)
                         else w * h)
        if not boxes and not keep_empty:
            skipped["no_boxes"] += 1
            continue
        b, l, c, a = _stack(boxes, labels, crowd, areas)
        records.append(Record(int(iid), path, int(width), int(height), b, l, c, a))
    if skipped["bad_bbox"]:
        warnings.warn(f"{json_path}: skipped {skipped['bad_bbox']} box(es) with width or height <= 0, "
                      f"e.g. {'; '.join(bad_examples)}", stacklevel=2)
    if skipped["bbox_outside_image"]:
        warnings.warn(f"{json_path}: skipped {skipped['bbox_outside_image']} box(es) lying entirely outside "
                      f"their image, e.g. {'; '.join(outside_examples)}", stacklevel=2)
    _check_not_empty(json_path, records, names, skipped, keep_empty)
    return DetectionDataset(json_path.parent, "coco", names, records, skipped)


# -------------------------------------------------------------------------------------- YOLO


def _is_image(p: Path) -> bool:
    return is_image_file(p) and p.is_file() and not p.name.startswith(".")


def _yolo_pairs(root: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(image, label path) pairs in sorted order, and the label files that have no image."""
    if (root / "images").is_dir() and (root / "labels").is_dir():
        image_root, label_root = root / "images", root / "labels"
    elif root.name == "images" and (root.parent / "labels").is_dir():
        image_root, label_root = root, root.parent / "labels"
    else:
        image_root = label_root = None
    if image_root is not None:
        images = sorted((p for p in image_root.rglob("*") if _is_image(p)),
                        key=lambda p: p.relative_to(image_root).as_posix())
        pairs = [(p, (label_root / p.relative_to(image_root)).with_suffix(".txt")) for p in images]
        labels = set(label_root.rglob("*.txt"))
    else:
        images = sorted((p for p in root.iterdir() if _is_image(p)), key=lambda p: p.name)
        pairs = [(p, p.with_suffix(".txt")) for p in images]
        labels = set(root.glob("*.txt"))
    seen: dict[Path, Path] = {}
    for image, label in pairs:
        if label in seen:
            raise ValueError(f"{label}: label file is claimed by two images, {seen[label].name} and "
                             f"{image.name}; keep one image per name")
        seen[label] = image
    orphans = sorted(labels - set(seen))
    return pairs, orphans


def parse_yolo_label(path: Path, num_classes: int) -> list[tuple[int, float, float, float, float]]:
    """Lines ``class cx cy w h`` (0-based class, normalized); ValueError with ``file:line``."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text label file") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{n}"
        if len(parts) != 5:
            raise ValueError(f"{where}: expected 5 columns 'class cx cy w h', got {len(parts)}: {line.strip()!r}")
        try:
            cls = int(parts[0])
        except ValueError:
            raise ValueError(f"{where}: class id {parts[0]!r} is not an integer") from None
        if not 0 <= cls < num_classes:
            raise ValueError(f"{where}: class id {cls} out of range: {num_classes} class(es), ids "
                             f"0..{num_classes - 1}")
        try:
            values = [float(v) for v in parts[1:]]
        except ValueError:
            raise ValueError(f"{where}: non-numeric coordinate in {line.strip()!r}") from None
        for name, v in zip(("cx", "cy", "w", "h"), values):
            if not math.isfinite(v) or v < -YOLO_TOLERANCE or v > 1 + YOLO_TOLERANCE:
                raise ValueError(f"{where}: {name} = {v} is outside [0, 1] (coordinates are fractions "
                                 "of the image size)")
        cx, cy, w, h = (min(max(v, 0.0), 1.0) for v in values)
        if w <= 0 or h <= 0:
            raise ValueError(f"{where}: box width and height must be > 0, got w={values[2]} h={values[3]}")
        rows.append((cls, cx, cy, w, h))
    return rows


def read_yolo(root: str | os.PathLike, class_names: Sequence[str] = ("person",),
              keep_empty: bool = False) -> DetectionDataset:
    """Read ST's YOLO-Darknet layout: ``name.jpg`` + ``name.txt`` beside it, or ``images/`` +
    ``labels/`` (mirrored relative paths). ``image_id`` = index in sorted file order (all images,
    so ids do not depend on ``keep_empty``); sizes come from image headers (EXIF-aware)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder")
    names = _check_class_names(class_names)
    pairs, orphans = _yolo_pairs(root)
    if not pairs:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found for a YOLO dataset")
    skipped = {"no_boxes": 0, "no_label_file": 0, "orphan_label_file": len(orphans)}
    unlabelled: list[Path] = []
    records = []
    for image_id, (image, label) in enumerate(pairs):
        rows = parse_yolo_label(label, len(names)) if label.is_file() else None
        if not rows and not keep_empty:
            skipped["no_label_file" if rows is None else "no_boxes"] += 1
            if rows is None:
                unlabelled.append(image)
            continue
        width, height = image_size(image)
        boxes, labels, areas = [], [], []
        for cls, cx, cy, w, h in rows or ():
            x1, y1 = max(cx - w / 2, 0.0), max(cy - h / 2, 0.0)
            x2, y2 = min(cx + w / 2, 1.0), min(cy + h / 2, 1.0)
            boxes.append((x1, y1, x2, y2))
            labels.append(cls + 1)
            areas.append((x2 - x1) * width * (y2 - y1) * height)
        b, l, c, a = _stack(boxes, labels, [False] * len(labels), areas)
        records.append(Record(image_id, image, width, height, b, l, c, a))
    if skipped["no_label_file"]:
        warnings.warn(f"{root}: skipped {skipped['no_label_file']} image(s) without a label file, e.g. "
                      f"{', '.join(map(str, unlabelled[:3]))}", stacklevel=2)
    if orphans:
        warnings.warn(f"{root}: ignored {len(orphans)} label file(s) without an image, e.g. "
                      f"{', '.join(map(str, orphans[:3]))}", stacklevel=2)
    _check_not_empty(root, records, names, skipped, keep_empty)
    return DetectionDataset(root, "yolo", names, records, skipped)


# ------------------------------------------------------------------------------ auto-detect

_EXPECTED = ("expected a COCO .json file, a folder with annotations.json (or exactly one *.json) "
             "and its images (images/), or a YOLO-Darknet folder (images/ + labels/, or name.txt "
             "beside each image)")


def open_dataset(path: str | os.PathLike, class_names: Sequence[str] = ("person",),
                 keep_empty: bool = False) -> DetectionDataset:
    """Open a COCO json / COCO folder / YOLO folder, detected from what is on disk."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file or folder")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return read_coco(path, class_names=class_names, keep_empty=keep_empty)
        raise ValueError(f"{path}: not a dataset; {_EXPECTED}")
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise ValueError(f"{path}: folder is empty; {_EXPECTED}")
    if (path / "annotations.json").is_file():
        return read_coco(path / "annotations.json", class_names=class_names, keep_empty=keep_empty)
    jsons = sorted(p for p in entries if p.suffix.lower() == ".json" and p.is_file())
    has_txt = any(p.suffix.lower() == ".txt" and p.is_file() for p in entries)
    has_labels = (path / "labels").is_dir() or (path.name == "images" and (path.parent / "labels").is_dir())
    if has_labels:
        return read_yolo(path, class_names=class_names, keep_empty=keep_empty)
    if len(jsons) == 1 and ((path / "images").is_dir() or not has_txt):
        return read_coco(jsons[0], class_names=class_names, keep_empty=keep_empty)
    if has_txt and any(_is_image(p) for p in entries):
        return read_yolo(path, class_names=class_names, keep_empty=keep_empty)
    if len(jsons) > 1:
        raise ValueError(f"{path}: several json files ({', '.join(p.name for p in jsons)}) and no "
                         "annotations.json; pass the json file itself")
    subsets = [name for name in ("coco", "yolo") if (path / name).is_dir()]
    if subsets:
        raise ValueError(f"{path}: looks like a prepare_data output folder; pass "
                         f"{' or '.join(str(path / s) for s in subsets)}")
    raise ValueError(f"{path}: not a dataset; {_EXPECTED}")
