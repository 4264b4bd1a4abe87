"""Build a COCO 2017 subset (ST's ``dataset_converter``, COCO mode) in COCO and YOLO layouts.

ST's person set is the default (``--classes person``); any list of COCO category names gives a
multi-class set with the same rules, labels in ``--classes`` order. ``python -m ssd_mnv1.prepare_data``
runs it; :func:`download_coco` fetches the official zips (:mod:`ssd_mnv1.download`).

Input (:class:`CocoSource`, one or more paths): an extracted COCO 2017 download (a folder with
``annotations/instances_<split>.json`` and ``<split>/``), the official zips
(``annotations_trainval2017.zip`` and ``<split>.zip``, or a folder holding them), or a mix.

Output (:mod:`ssd_mnv1.data.writer`) ``OUT/coco/images/*.jpg`` + ``OUT/coco/annotations.json`` and
``OUT/yolo/images/*.jpg`` + ``OUT/yolo/labels/*.txt``. As in ST's converter:

* every annotation of the chosen categories is kept, crowd boxes included;
* an image is kept only if it has at least one such box (so the set has no empty images);
* YOLO lines are ``class cx cy w h`` with 6 decimals, class = index in ``--classes`` (0..C-1; the
  first name is 0), ``cx = (x + w/2) / width`` etc. in annotation order.

Decisions beyond ST's converter (kept identical to :mod:`ssd_mnv1.data.datasets`):

* an annotation with width or height <= 0, or lying entirely outside its image, is dropped from
  both layouts (counted and printed); ST would write a degenerate line;
* a box overhanging the image edge is clipped to the image in the YOLO file only (ST writes it
  unclipped, which can put ``cx + w/2`` beyond 1); boxes inside the image are written exactly as
  ST does. The COCO json keeps every kept annotation unchanged;
* the COCO json keeps the official category ids (person = 1), image records, annotation fields
  (segmentation included), ``info`` and ``licenses``; only the chosen categories remain, listed in
  ``--classes`` order. Readers map categories by name (``read_coco(class_names=...)``), so the
  official ids need no renumbering and label k is the k-th name in both layouts;
* a ``--classes`` name missing from the source json is an error listing the available names (and
  the closest ones) before anything is written;
* files are written atomically (temp file + rename); the YOLO image is a hard link to the COCO
  copy when both layouts are written and the filesystem allows it. A rerun into the same ``OUT``
  reuses images already there with the right size (resuming an interrupted run) and refuses an
  ``OUT`` holding files this run would not write.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from ..download import download_file
from ..fileio import user_cache_dir
from ..progress import progress as progress_bar
from .datasets import check_coco_structure, coco_bbox, coco_category_labels
from .writer import DatasetWriter, yolo_line

DEFAULT_BASE_URL = "http://images.cocodataset.org"
SPLITS = ("train2017", "val2017")
ANNOTATIONS_ZIP = "annotations_trainval2017.zip"
DEFAULT_CACHE = user_cache_dir("coco2017")

#: Official archive sizes and md5 sums, as published by several public download scripts
#: (torchvision-style dataset loaders, MLPerf); not re-downloaded here. Override with --checksums.
KNOWN_CHECKSUMS: dict[str, dict] = {
    "annotations_trainval2017.zip": {"size": 252907541, "md5": "f4bbac642086de4f52a3fdda2de5fa2c"},
    "val2017.zip": {"size": 815585330, "md5": "442b8da7639aecaf257c1dceb8ba8c80"},
    "train2017.zip": {"size": 19336861798, "md5": "cced6f7f71b7629ddf16f17bbcfab6b2"},
}
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------- download


def archive_urls(split: str, base_url: str = DEFAULT_BASE_URL) -> dict[str, str]:
    """File name -> URL of the two official archives needed for ``split``."""
    _check_split(split)
    base = base_url.rstrip("/")
    return {ANNOTATIONS_ZIP: f"{base}/annotations/{ANNOTATIONS_ZIP}", f"{split}.zip": f"{base}/zips/{split}.zip"}


def download_coco(cache_dir: str | os.PathLike, split: str, *, base_url: str = DEFAULT_BASE_URL,
                  checksums: dict[str, dict] | None = None, progress: bool = True,
                  timeout: float = 60.0) -> list[Path]:
    """Fetch ``annotations_trainval2017.zip`` and ``<split>.zip`` into ``cache_dir``."""
    table = {**KNOWN_CHECKSUMS, **(checksums or {})}
    cache_dir = Path(cache_dir)
    paths = []
    for name, url in archive_urls(split, base_url).items():
        entry = table.get(name, {})
        paths.append(download_file(url, cache_dir / name, md5=entry.get("md5"), size=entry.get("size"),
                                   progress=progress, timeout=timeout))
    return paths


# ------------------------------------------------------------------------------------ source


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")


class CocoSource:
    """Annotations and images of one COCO split from extracted folders and/or the official zips."""

    def __init__(self, paths: Sequence[str | os.PathLike], split: str):
        _check_split(split)
        self.split = split
        self.ann_json: Path | None = None
        self.ann_zip: tuple[zipfile.ZipFile, str] | None = None
        self.image_dir: Path | None = None
        self.image_zip: zipfile.ZipFile | None = None
        self._zip_members: set[str] = set()
        self._zips: list[zipfile.ZipFile] = []
        paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        for p in paths:
            if not p.exists():
                raise FileNotFoundError(f"{p}: no such COCO folder or zip")
            if p.is_dir():
                for cand in (p / "annotations" / f"instances_{split}.json", p / f"instances_{split}.json"):
                    if self.ann_json is None and self.ann_zip is None and cand.is_file():
                        self.ann_json = cand
                if self.image_dir is None and self.image_zip is None and (p / split).is_dir():
                    self.image_dir = p / split
                for name in (ANNOTATIONS_ZIP, f"{split}.zip"):
                    if (p / name).is_file():
                        self._add_zip(p / name)
            elif zipfile.is_zipfile(p):
                self._add_zip(p)
            else:
                raise ValueError(f"{p}: neither a folder nor a zip archive")
        looked = ", ".join(str(p) for p in paths)
        if self.ann_json is None and self.ann_zip is None:
            self.close()
            raise FileNotFoundError(f"no annotations/instances_{split}.json (extracted, or inside "
                                    f"{ANNOTATIONS_ZIP}) in {looked}")
        if self.image_dir is None and self.image_zip is None:
            self.close()
            raise FileNotFoundError(f"no {split}/ image folder (extracted, or inside {split}.zip) in {looked}")

    def _add_zip(self, path: Path) -> None:
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"{path}: not a readable zip archive ({exc})") from None
        self._zips.append(zf)
        names = zf.namelist()
        member = f"annotations/instances_{self.split}.json"
        if self.ann_json is None and self.ann_zip is None and member in names:
            self.ann_zip = (zf, member)
        prefix = f"{self.split}/"
        if self.image_dir is None and self.image_zip is None and any(n.startswith(prefix) for n in names):
            self.image_zip = zf
            self._zip_members = {n[len(prefix):] for n in names if n.startswith(prefix) and not n.endswith("/")}

    def describe(self) -> str:
        ann = str(self.ann_json) if self.ann_json else f"{self.ann_zip[1]} in {self.ann_zip[0].filename}"
        img = str(self.image_dir) if self.image_dir else f"{self.split}/ in {self.image_zip.filename}"
        return f"annotations {ann}; images {img}"

    def annotation_name(self) -> str:
        return str(self.ann_json) if self.ann_json else f"{self.ann_zip[0].filename}:{self.ann_zip[1]}"

    def load_annotations(self) -> dict:
        name = self.annotation_name()
        try:
            if self.ann_json is not None:
                with open(self.ann_json, "rb") as f:
                    data = json.load(f)
            else:
                zf, member = self.ann_zip
                with zf.open(member) as f:
                    data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{name}: not valid JSON ({exc})") from None
        check_coco_structure(data, name)
        return data

    def has_image(self, file_name: str) -> bool:
        if self.image_dir is not None:
            return (self.image_dir / file_name).is_file()
        return file_name in self._zip_members

    def image_bytes(self, file_name: str) -> int:
        if self.image_dir is not None:
            return (self.image_dir / file_name).stat().st_size
        return self.image_zip.getinfo(f"{self.split}/{file_name}").file_size

    def copy_image(self, file_name: str, dest: Path) -> None:
        """Copy image ``file_name`` of the split to ``dest`` (write it through :func:`~ssd_mnv1.fileio.atomic_path`)."""
        if self.image_dir is not None:
            shutil.copyfile(self.image_dir / file_name, dest)
        else:
            with self.image_zip.open(f"{self.split}/{file_name}") as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)

    def close(self) -> None:
        for zf in self._zips:
            zf.close()
        self._zips = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------------- prepare


@dataclass
class PrepareStats:
    split: str
    classes: list[str]
    images_total: int = 0
    images_kept: int = 0
    images_dropped: int = 0        # no box of the chosen classes (ST's converter drops them)
    boxes: int = 0
    crowd_boxes: int = 0
    bad_boxes: int = 0             # width or height <= 0: dropped
    outside_boxes: int = 0         # entirely outside the image: dropped
    clipped_boxes: int = 0         # overhanging an edge: clipped in the YOLO labels
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    images_copied: int = 0
    images_reused: int = 0         # already in OUT with the right size (rerun)
    outputs: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        names = "/".join(self.classes)
        lines = [f"{self.split}: {self.images_total} images, kept {self.images_kept} with >= 1 {names} box, "
                 f"dropped {self.images_dropped} without",
                 f"  boxes: {self.boxes} ({self.crowd_boxes} crowd, kept as ordinary boxes)"]
        if len(self.classes) > 1:
            lines.append("  per class: " + ", ".join(f"{n} {self.boxes_per_class.get(n, 0)}" for n in self.classes))
        if self.bad_boxes or self.outside_boxes:
            lines.append(f"  dropped boxes: {self.bad_boxes} with width/height <= 0, "
                         f"{self.outside_boxes} outside their image")
        if self.clipped_boxes:
            lines.append(f"  {self.clipped_boxes} box(es) overhanging the image edge clipped in the YOLO labels")
        lines.append(f"  images copied {self.images_copied}, already present {self.images_reused}")
        lines += [f"  {layout}: {path}" for layout, path in self.outputs.items()]
        return "\n".join(lines)


def _safe_relative(file_name: str, where: str) -> str:
    rel = PurePosixPath(file_name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"{where}: file_name {file_name!r} must be a relative path inside the image folder")
    return rel.as_posix()


def prepare_coco(source: CocoSource | Sequence[str | os.PathLike], split: str, out: str | os.PathLike,
                 class_names: Sequence[str] = ("person",), layouts: Sequence[str] = ("coco", "yolo"),
                 progress: bool = True) -> PrepareStats:
    """Write the chosen-class subset of ``split`` under ``out`` (see the module docstring)."""
    _check_split(split)
    names = [class_names] if isinstance(class_names, str) else list(class_names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--classes must be distinct names, got {names}")
    layouts = list(dict.fromkeys(layouts))
    if not layouts or not set(layouts) <= {"coco", "yolo"}:
        raise ValueError(f"layouts must be coco and/or yolo, got {layouts}")
    own = not isinstance(source, CocoSource)
    src = CocoSource(source, split) if own else source
    try:
        return _prepare(src, split, Path(out), names, layouts, progress)
    finally:
        if own:
            src.close()


def _check_category_names(data: dict, names: list[str], ann_name: str) -> None:
    """One error for all misspelt names, with the closest COCO names: there are 80 to choose from."""
    available = sorted({str(c["name"]) for c in data["categories"] if isinstance(c, dict) and "name" in c})
    unknown = [n for n in names if n not in available]
    if not unknown:
        return
    close = [m for n in unknown for m in difflib.get_close_matches(n, available, n=2, cutoff=0.6)]
    hint = f"; did you mean {', '.join(map(repr, dict.fromkeys(close)))}?" if close else ""
    raise ValueError(f"{ann_name}: --classes: unknown category name(s) {', '.join(map(repr, unknown))}{hint}; "
                     f"available: {', '.join(available) or 'none'}")


def _prepare(src: CocoSource, split: str, out: Path, names: list[str], layouts: list[str],
             progress: bool) -> PrepareStats:
    ann_name = src.annotation_name()
    if progress:
        print(f"reading {ann_name}", flush=True)
    data = src.load_annotations()
    _check_category_names(data, names, ann_name)
    labels_of = coco_category_labels(data, names, ann_name)
    stats = PrepareStats(split, names)

    images, order = {}, []
    for i, img in enumerate(data["images"]):
        for key in ("id", "file_name", "width", "height"):
            if not isinstance(img, dict) or key not in img:
                raise ValueError(f"{ann_name}: images[{i}] has no '{key}'")
        if img["id"] in images:
            raise ValueError(f"{ann_name}: images[{i}] repeats image id {img['id']}")
        images[img["id"]] = img
        order.append(img["id"])
    per_image: dict = {iid: [] for iid in order}
    for i, ann in enumerate(data["annotations"]):
        for key in ("image_id", "category_id", "bbox"):
            if not isinstance(ann, dict) or key not in ann:
                raise ValueError(f"{ann_name}: annotations[{i}] has no '{key}'")
        if ann["category_id"] not in labels_of:
            continue
        if ann["image_id"] not in per_image:
            raise ValueError(f"{ann_name}: annotations[{i}] (id {ann.get('id', '?')}) field 'image_id' "
                             f"refers to unknown image id {ann['image_id']}")
        x, y, w, h = coco_bbox(ann, i, ann_name)
        img = images[ann["image_id"]]
        if w <= 0 or h <= 0:
            stats.bad_boxes += 1
        elif x >= img["width"] or y >= img["height"] or x + w <= 0 or y + h <= 0:
            stats.outside_boxes += 1
        else:
            per_image[ann["image_id"]].append(ann)

    stats.images_total = len(order)
    kept = [iid for iid in order if per_image[iid]]
    stats.images_kept, stats.images_dropped = len(kept), len(order) - len(kept)
    files = {}
    for iid in kept:
        rel = _safe_relative(str(images[iid]["file_name"]), f"{ann_name}: image id {iid}")
        if not src.has_image(rel):
            raise ValueError(f"{ann_name}: image id {iid} file {rel!r} is not in {src.describe()}")
        files[iid] = rel
    if len(set(files.values())) != len(files):
        raise ValueError(f"{ann_name}: several kept images share a file_name")

    # Refuse to mix with files of another run (other split or classes) before writing anything.
    writer = DatasetWriter({layout: out / layout for layout in layouts})
    writer.refuse_other_files(files.values(), "use an empty --out")

    for iid in progress_bar(kept, desc=f"{split} -> {out}", unit="img", disable=not progress):
        rel, img = files[iid], images[iid]
        written = writer.add_image(rel, lambda path, rel=rel: src.copy_image(rel, path), size=src.image_bytes(rel))
        stats.images_copied += written
        stats.images_reused += len(layouts) - written
        if "yolo" in layouts:
            lines = []
            for ann in per_image[iid]:
                line, clipped = yolo_line(labels_of[ann["category_id"]] - 1, ann["bbox"], img["width"], img["height"])
                stats.clipped_boxes += clipped
                lines.append(line)
            writer.add_labels(rel, lines)
        stats.boxes += len(per_image[iid])
        for ann in per_image[iid]:
            name = names[labels_of[ann["category_id"]] - 1]
            stats.boxes_per_class[name] = stats.boxes_per_class.get(name, 0) + 1
        stats.crowd_boxes += sum(bool(a.get("iscrowd", 0)) for a in per_image[iid])

    if "coco" in layouts:
        chosen = set(labels_of)
        subset = {
            "info": data.get("info", {}),
            "licenses": data.get("licenses", []),
            "images": [images[iid] for iid in kept],
            "annotations": [a for iid in kept for a in per_image[iid]],
            "categories": sorted((c for c in data["categories"] if c["id"] in chosen),
                                 key=lambda c: labels_of[c["id"]]),
        }
        writer.write_coco(subset)
        stats.outputs["coco"] = out / "coco"
    if "yolo" in layouts:
        stats.outputs["yolo"] = out / "yolo"
    return stats
