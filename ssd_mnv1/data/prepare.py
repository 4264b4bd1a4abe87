"""Build a COCO 2017 subset (ST's ``dataset_converter``, COCO mode) in COCO and YOLO layouts.

ST's person set is the default (``--classes person``); any list of COCO category names gives a
multi-class set with the same rules, labels in ``--classes`` order.

    python -m ssd_mnv1.prepare_data --coco DIR_OR_ZIPS [...] --split val2017|train2017 --out OUT
                                    [--classes person] [--layout coco|yolo|both]
                                    [--download [--base-url URL] [--checksums FILE]]

Input (``--coco``, one or more paths): an extracted COCO 2017 download (a folder with
``annotations/instances_<split>.json`` and ``<split>/``), the official zips
(``annotations_trainval2017.zip`` and ``<split>.zip``, or a folder holding them), or a mix.
With ``--download`` the zips are first fetched into ``--coco DIR`` (the cache; default
``~/.cache/ssd_mnv1/coco2017``) from ``--base-url`` with HTTP Range resume and md5/size checks.

Output ``OUT/coco/images/*.jpg`` + ``OUT/coco/annotations.json`` and ``OUT/yolo/images/*.jpg`` +
``OUT/yolo/labels/*.txt``. As in ST's converter:

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

import argparse
import difflib
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from ..fileio import atomic_path, atomic_write_text
from ..progress import progress as progress_bar
from .datasets import check_coco_structure, coco_bbox, coco_category_labels

DEFAULT_BASE_URL = "http://images.cocodataset.org"
SPLITS = ("train2017", "val2017")
ANNOTATIONS_ZIP = "annotations_trainval2017.zip"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ssd_mnv1" / "coco2017"

#: Official archive sizes and md5 sums, as published by several public download scripts
#: (torchvision-style dataset loaders, MLPerf); not re-downloaded here. Override with --checksums.
KNOWN_CHECKSUMS: dict[str, dict] = {
    "annotations_trainval2017.zip": {"size": 252907541, "md5": "f4bbac642086de4f52a3fdda2de5fa2c"},
    "val2017.zip": {"size": 815585330, "md5": "442b8da7639aecaf257c1dceb8ba8c80"},
    "train2017.zip": {"size": 19336861798, "md5": "cced6f7f71b7629ddf16f17bbcfab6b2"},
}
_CHUNK = 1 << 20


def _say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, flush=True)


# ---------------------------------------------------------------------------------- download


def archive_urls(split: str, base_url: str = DEFAULT_BASE_URL) -> dict[str, str]:
    """File name -> URL of the two official archives needed for ``split``."""
    _check_split(split)
    base = base_url.rstrip("/")
    return {ANNOTATIONS_ZIP: f"{base}/annotations/{ANNOTATIONS_ZIP}", f"{split}.zip": f"{base}/zips/{split}.zip"}


def load_checksums(path: str | os.PathLike) -> dict[str, dict]:
    """``{filename: md5}`` or ``{filename: {"md5": ..., "size": ...}}`` -> ``{filename: {...}}``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checksums file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object {{filename: md5}}")
    out = {}
    for name, value in raw.items():
        entry = {"md5": value} if isinstance(value, str) else value
        if not isinstance(entry, dict) or not set(entry) <= {"md5", "size"}:
            raise ValueError(f"{path}: entry {name!r} must be an md5 string or {{\"md5\": ..., \"size\": ...}}")
        md5 = entry.get("md5")
        if md5 is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", str(md5)):
            raise ValueError(f"{path}: entry {name!r}: {md5!r} is not an md5 hex digest")
        out[name] = {k: (v.lower() if k == "md5" and v else v) for k, v in entry.items()}
    return out


def file_md5(path: Path, progress: bool = False) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f, progress_bar(total=path.stat().st_size, unit="B", unit_scale=True,
                                             desc=f"md5 {path.name}", disable=not progress) as bar:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


class _Restart(Exception):
    """The server answered in a way that makes the partial file unusable: start from zero."""


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    m = re.fullmatch(r"\s*bytes\s+(\d+|\*)(?:-\d+)?/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = None if m[1] == "*" else int(m[1])
    total = None if m[2] == "*" else int(m[2])
    return start, total


def _fetch(url: str, part: Path, *, timeout: float, progress: bool) -> int | None:
    """Append the rest of ``url`` to ``part`` (HTTP Range); return the total size if announced."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "ssd_mnv1-prepare_data"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch, or the part is longer than the file
            _, total = _content_range(exc.headers.get("Content-Range"))
            if total == have:
                return total
            raise _Restart(f"server refused to resume at byte {have}") from None
        raise ValueError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if have and response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != have:
                raise _Restart(f"server resumed at byte {start}, expected {have}")
            mode = "ab"
        else:
            if have:
                _say(f"{url}: server ignored the resume request; downloading from the start")
            have, mode, total = 0, "wb", length
        with open(part, mode) as f, progress_bar(total=total, initial=have, unit="B", unit_scale=True,
                                                 desc=part.name[:-5], disable=not progress) as bar:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    if total is not None and got < total:
        raise ConnectionError(f"connection closed at byte {got} of {total}")
    return total


def _verify(path: Path, name: str, md5: str | None, size: int | None, progress: bool) -> None:
    """Raise ValueError on a size or md5 mismatch; say when only the size could be checked."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ValueError(f"{name}: size mismatch: expected {size} bytes, got {actual}")
    if md5:
        got = file_md5(path, progress)
        if got != md5.lower():
            raise ValueError(f"{name}: md5 mismatch: expected {md5.lower()}, got {got}")
        _say(f"{name}: md5 ok ({got})")
    elif size is not None:
        _say(f"{name}: no known md5; verified the size only ({actual} bytes)")
    else:
        _say(f"{name}: no known md5 or size; NOT verified")


def download_file(url: str, dest: str | os.PathLike, *, md5: str | None = None, size: int | None = None,
                  progress: bool = True, timeout: float = 60.0, retries: int = 3) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed with HTTP Range on a rerun or a
    dropped connection); verify md5 (or size only when no md5 is known), then rename into place.

    An existing ``dest`` was renamed there only after verification, so it is checked by size only.
    On a checksum mismatch the ``.part`` file is deleted (the next run starts over).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.is_file():
        if size is not None and dest.stat().st_size != size:
            raise ValueError(f"{dest}: existing file has {dest.stat().st_size} bytes, expected {size}; "
                             "delete it to download again")
        _say(f"{dest.name}: already downloaded ({dest})")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if part.exists():
        _say(f"{dest.name}: resuming at byte {part.stat().st_size}")
    total, restarts = None, 0
    attempt = 0
    while True:
        try:
            total = _fetch(url, part, timeout=timeout, progress=progress)
            break
        except _Restart as exc:
            restarts += 1
            if restarts > 1:
                raise ValueError(f"{url}: cannot resume ({exc})") from None
            _say(f"{dest.name}: {exc}; downloading from the start")
            part.unlink(missing_ok=True)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
                TimeoutError) as exc:
            attempt += 1
            reason = getattr(exc, "reason", exc)
            if attempt >= retries:
                raise ValueError(f"{url}: download failed after {retries} attempt(s) ({reason}); rerun to "
                                 f"resume from {part}") from None
            _say(f"{dest.name}: {reason}; retrying ({attempt}/{retries - 1})")
    if size is not None and total is not None and size != total:
        _say(f"{dest.name}: the server announces {total} bytes, the checksum table {size}")
    try:
        _verify(part, dest.name, md5, size if size is not None else total, progress)
    except ValueError as exc:
        part.unlink(missing_ok=True)
        raise ValueError(f"{exc} (downloaded from {url}; the partial file was deleted)") from None
    os.replace(part, dest)
    return dest


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
        with atomic_path(dest) as tmp:
            if self.image_dir is not None:
                shutil.copyfile(self.image_dir / file_name, tmp)
            else:
                with self.image_zip.open(f"{self.split}/{file_name}") as src, open(tmp, "wb") as dst:
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


def yolo_line(class_id: int, bbox: Sequence[float], width: float, height: float) -> tuple[str, bool]:
    """ST's converter line ``class cx cy w h`` (6 decimals); boxes over the edge are clipped first."""
    x, y, w, h = bbox
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, float(width)), min(y + h, float(height))
    clipped = (x1, y1, x2, y2) != (x, y, x + w, y + h)
    if clipped:
        x, y, w, h = x1, y1, x2 - x1, y2 - y1
    x_center = (x + w / 2) / width
    y_center = (y + h / 2) / height
    return f"{class_id} {x_center:.6f} {y_center:.6f} {w / width:.6f} {h / height:.6f}\n", clipped


def _existing_files(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def _place_image(source: CocoSource, file_name: str, dest: Path, link_from: Path | None,
                 stats: PrepareStats) -> None:
    if dest.is_file() and dest.stat().st_size == source.image_bytes(file_name):
        stats.images_reused += 1
        return
    if link_from is not None:
        with atomic_path(dest) as tmp:
            tmp.unlink()
            try:
                os.link(link_from, tmp)
            except OSError:
                shutil.copyfile(link_from, tmp)
    else:
        source.copy_image(file_name, dest)
    stats.images_copied += 1


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
    _say(f"reading {ann_name}", not progress)
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
    planned = {
        "coco": (out / "coco" / "images", set(files.values())),
        "yolo": (out / "yolo" / "images", set(files.values())),
        "yolo-labels": (out / "yolo" / "labels",
                        {PurePosixPath(f).with_suffix(".txt").as_posix() for f in files.values()}),
    }
    for key, (folder, expected) in planned.items():
        if key.split("-")[0] not in layouts:
            continue
        extra = sorted(_existing_files(folder) - expected)
        if extra:
            raise ValueError(f"{folder} already holds {len(extra)} file(s) this run would not write "
                             f"(e.g. {extra[0]}); use an empty --out")

    coco_images = out / "coco" / "images"
    yolo_images, yolo_labels = out / "yolo" / "images", out / "yolo" / "labels"
    for iid in progress_bar(kept, desc=f"{split} -> {out}", unit="img", disable=not progress):
        rel, img = files[iid], images[iid]
        coco_dest = coco_images / rel
        if "coco" in layouts:
            _place_image(src, rel, coco_dest, None, stats)
        if "yolo" in layouts:
            _place_image(src, rel, yolo_images / rel, coco_dest if "coco" in layouts else None, stats)
            lines = []
            for ann in per_image[iid]:
                line, clipped = yolo_line(labels_of[ann["category_id"]] - 1, ann["bbox"], img["width"], img["height"])
                stats.clipped_boxes += clipped
                lines.append(line)
            atomic_write_text((yolo_labels / rel).with_suffix(".txt"), "".join(lines))
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
        atomic_write_text(out / "coco" / "annotations.json", json.dumps(subset) + "\n")
        stats.outputs["coco"] = out / "coco"
    if "yolo" in layouts:
        stats.outputs["yolo"] = out / "yolo"
    return stats


# --------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_mnv1.prepare_data",
        description="Build ST's COCO person set, or a subset of any COCO categories (--classes), in COCO and "
                    "YOLO-Darknet layouts from a COCO 2017 download.")
    parser.add_argument("--coco", nargs="+", metavar="DIR_OR_ZIP",
                        help="extracted COCO 2017 folder (annotations/ + <split>/), the official zips or a "
                             "folder with them; with --download: the download cache folder "
                             f"(default {DEFAULT_CACHE})")
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--out", required=True, help="output folder (gets coco/ and/or yolo/)")
    parser.add_argument("--classes", nargs="+", default=["person"],
                        help="COCO category names to keep, in label order: YOLO class 0 is the first "
                             "(default: person; quote names with spaces, e.g. 'traffic light')")
    parser.add_argument("--layout", default="both", choices=("coco", "yolo", "both"))
    parser.add_argument("--download", action="store_true",
                        help="download the official archives into the --coco folder first (resumable)")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL,
                        help=f"download server (default {DEFAULT_BASE_URL}; files annotations/{ANNOTATIONS_ZIP} "
                             "and zips/<split>.zip)")
    parser.add_argument("--checksums", help="JSON {filename: md5} overriding the built-in table")
    parser.add_argument("--timeout", type=float, default=60.0, help="download socket timeout, seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    classes = [c.strip() for name in args.classes for c in name.split(",") if c.strip()]
    layouts = ["coco", "yolo"] if args.layout == "both" else [args.layout]
    progress = not args.quiet and sys.stderr.isatty()
    if args.download:
        if args.coco and len(args.coco) > 1:
            raise ValueError("--download takes a single --coco folder (the download cache)")
        cache = Path(args.coco[0]) if args.coco else DEFAULT_CACHE
        checksums = load_checksums(args.checksums) if args.checksums else None
        download_coco(cache, args.split, base_url=args.base_url, checksums=checksums, progress=progress,
                      timeout=args.timeout)
        sources = [cache]
    else:
        if not args.coco:
            raise ValueError("give --coco DIR_OR_ZIP (or --download)")
        if args.checksums:
            raise ValueError("--checksums applies to --download only")
        sources = args.coco
    with CocoSource(sources, args.split) as source:
        print(f"source: {source.describe()}")
        stats = prepare_coco(source, args.split, args.out, classes, layouts, progress=progress)
    print(stats.summary())
    return 0
