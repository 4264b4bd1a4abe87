"""Writing detection datasets in the layouts :func:`ssd_mnv1.data.open_dataset` reads.

* COCO: ``ROOT/annotations.json`` + ``ROOT/images/<file>``;
* ST's YOLO-Darknet layout (ST's ``dataset_converter``): ``ROOT/images/<file>`` +
  ``ROOT/labels/<stem>.txt``, one ``class cx cy w h`` line per box (:func:`yolo_line`).

A :class:`DatasetWriter` writes one dataset into one or both: each image is written once, into the
first layout, and hard-linked into the other (copied where the file system cannot link, the one
:func:`link_or_copy`). Every file is written atomically (:func:`ssd_mnv1.fileio.atomic_path`), so
an interrupted run leaves whole files only, and an image already there with the expected size is
kept (a rerun resumes). ``ssd_mnv1.data.prepare`` (COCO 2017 subsets) and
``ssd_mnv1.training.synthetic`` (generated shapes) write through it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from ..fileio import atomic_path, atomic_write_text

#: The layouts a :class:`DatasetWriter` writes.
LAYOUTS = ("coco", "yolo")


def yolo_line(class_id: int, bbox: Sequence[float], width: float, height: float) -> tuple[str, bool]:
    """ST's converter line ``class cx cy w h`` (6 decimals) of a COCO ``[x, y, w, h]`` pixel box,
    and whether it was clipped: a box over the image edge is clipped to the image first."""
    x, y, w, h = bbox
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, float(width)), min(y + h, float(height))
    clipped = (x1, y1, x2, y2) != (x, y, x + w, y + h)
    if clipped:
        x, y, w, h = x1, y1, x2 - x1, y2 - y1
    x_center = (x + w / 2) / width
    y_center = (y + h / 2) / height
    return f"{class_id} {x_center:.6f} {y_center:.6f} {w / width:.6f} {h / height:.6f}\n", clipped


def link_or_copy(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """``dest`` as a hard link to ``src``, or a copy where the file system cannot link; atomically."""
    with atomic_path(dest) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def existing_files(folder: str | os.PathLike) -> set[str]:
    """Relative POSIX paths of the files under ``folder`` (hidden ones left out: temporary files)."""
    folder = Path(folder)
    if not folder.is_dir():
        return set()
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


class DatasetWriter:
    """Writes one dataset into the layouts of ``roots`` (layout -> its folder, in write order)."""

    def __init__(self, roots: Mapping[str, str | os.PathLike]):
        self.roots = {layout: Path(root) for layout, root in roots.items()}
        if not self.roots or not set(self.roots) <= set(LAYOUTS):
            raise ValueError(f"layouts must be coco and/or yolo, got {list(self.roots)}")

    def images(self, layout: str) -> Path:
        return self.roots[layout] / "images"

    def labels(self) -> Path:
        return self.roots["yolo"] / "labels"

    def label_file(self, file_name: str) -> Path:
        return (self.labels() / file_name).with_suffix(".txt")

    def refuse_other_files(self, file_names: Iterable[str], hint: str) -> None:
        """A ValueError when a folder already holds files this dataset would not write (another
        run's: another split, other classes), naming the folder, one such file and ``hint``."""
        files = set(file_names)
        planned = [(self.images(layout), files) for layout in self.roots]
        if "yolo" in self.roots:
            planned.append((self.labels(), {PurePosixPath(f).with_suffix(".txt").as_posix() for f in files}))
        for folder, expected in planned:
            extra = sorted(existing_files(folder) - expected)
            if extra:
                raise ValueError(f"{folder} already holds {len(extra)} file(s) this run would not write "
                                 f"(e.g. {extra[0]}); {hint}")

    def add_image(self, file_name: str, write: Callable[[Path], object], size: int | None = None) -> int:
        """Put image ``file_name`` into every layout: ``write(path)`` writes it once, into the first
        layout; the others get a hard link (or a copy). A file already there with ``size`` bytes is
        kept. Returns the number of files written."""
        written, first = 0, None
        for layout in self.roots:
            dest = self.images(layout) / file_name
            if size is not None and dest.is_file() and dest.stat().st_size == size:
                pass
            elif first is None:
                with atomic_path(dest) as tmp:
                    write(tmp)
                written += 1
            else:
                link_or_copy(first, dest)
                written += 1
            first = first or dest
        return written

    def add_labels(self, file_name: str, lines: Iterable[str]) -> None:
        """The YOLO label file of image ``file_name`` (lines from :func:`yolo_line`)."""
        atomic_write_text(self.label_file(file_name), "".join(lines))

    def write_coco(self, data: Mapping) -> Path:
        """The COCO layout's ``annotations.json`` (``images``, ``annotations``, ``categories``, ...)."""
        path = self.roots["coco"] / "annotations.json"
        atomic_write_text(path, json.dumps(data) + "\n")
        return path
