"""Synthetic data: the person generator is pinned; the multi-class shapes dataset written to disk
reads back identically in both layouts, with tight boxes, deterministically, through the CLI too."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssd_mnv1.cli import run
from ssd_mnv1.data import open_dataset
from ssd_mnv1.synthetic import main
from ssd_mnv1.training import synthetic
from ssd_mnv1.training.synthetic import (SHAPES, SyntheticPersons, _render_objects, render_objects, render_scene,
                                         write_synthetic_dataset)

ALL = list(SHAPES)


def sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_person_generator_is_unchanged():
    # Hashes taken before the multi-class shapes were added: the quickstart's data must not move.
    image, boxes = render_scene(0, 0, 256)
    assert sha(image) == "c7f68493f0dc84d05e96685b24b42a50063e4ce199ae32c9f4fe77985d04f16c"
    assert sha(boxes) == "583851ccfd1da87d963e8608e7d7c1f270bcef7ee7dd72ab156e843ae33b762d"
    image, boxes = render_scene(7, 5, 320)
    assert sha(image) == "18f962f4fbfc4424d23683ca1258e98735cebf65adda93cfb86e7453da9ab525"
    assert sha(boxes) == "8d489c4616fe739ee44c288cbb3082f366b0092c34f081475ced063c97a45338"
    image, record = SyntheticPersons(4, seed=1, size=160)[2]
    assert sha(image) == "a87006721ba5696d9d23214b2cb0613f759af8ec9246be037c453f4cee56a7d7"
    np.testing.assert_allclose(record.boxes, [[0.330295, 0.136149, 0.543877, 0.644678],
                                              [0.034222, 0.023881, 0.346344, 0.767028]], atol=1e-6)


def test_scenes_hold_every_class_within_the_size_and_overlap_rules():
    seen, counts = set(), set()
    for i in range(40):
        image, boxes, labels = render_objects(1, i, ALL, size=160)
        assert image.shape == (160, 160, 3) and image.dtype == np.uint8
        assert 1 <= len(boxes) <= 4 and len(labels) == len(boxes)
        assert ((boxes >= 0) & (boxes <= 1)).all()
        long_side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        assert ((long_side > 0.15 - 2 / 160) & (long_side < 0.70 + 2 / 160)).all()
        for a in range(len(boxes)):
            for b in range(a):
                assert synthetic._iou(boxes[a], boxes[b]) < 0.2
        seen |= set(labels.tolist())
        counts.add(len(boxes))
    assert seen == {1, 2, 3, 4} and len(counts) >= 3


def test_boxes_are_tight_to_the_drawn_pixels():
    """Every box edge runs through object pixels, and nothing is drawn 4 px or more outside it
    (1-3 px is the blur), measured against the same scene rendered without its objects."""
    for i in range(12):
        image, boxes, _ = _render_objects(5, i, ALL, 320, 4)
        bare, _, _ = _render_objects(5, i, ALL, 320, 4, draw_objects=False)
        diff = np.abs(np.asarray(image, int) - np.asarray(bare, int)).max(axis=2)
        near_objects = np.zeros(diff.shape, bool)
        for x1, y1, x2, y2 in boxes:
            near_objects[max(y1 - 4, 0):y2 + 4, max(x1 - 4, 0):x2 + 4] = True
        for x1, y1, x2, y2 in boxes:
            for edge in (diff[y1, x1:x2], diff[y2 - 1, x1:x2], diff[y1:y2, x1], diff[y1:y2, x2 - 1]):
                assert edge.max() > 12, (i, (x1, y1, x2, y2))
        # far from every object the scene is exactly the bare one
        assert diff[~near_objects].max() == 0, i


def read_both(root: Path, names):
    return open_dataset(root / "coco", class_names=names), open_dataset(root / "yolo", class_names=names)


def test_written_dataset_opens_in_both_layouts_with_identical_boxes(tmp_path):
    names = ["sign", "person", "wheel", "crate"]
    roots = write_synthetic_dataset(tmp_path / "ds", names, 24, seed=3, size=160, layout="both", progress=False)
    assert roots == {"coco": tmp_path / "ds" / "coco", "yolo": tmp_path / "ds" / "yolo"}
    coco, yolo = read_both(tmp_path / "ds", names)
    assert (coco.layout, yolo.layout, len(coco), len(yolo)) == ("coco", "yolo", 24, 24)
    for i, (rc, ry) in enumerate(zip(coco.records, yolo.records)):
        assert rc.file.name == ry.file.name == f"{i:06d}.jpg" and (rc.width, rc.height) == (160, 160)
        np.testing.assert_array_equal(rc.labels, ry.labels)
        np.testing.assert_allclose(rc.boxes, ry.boxes, atol=1e-6)
        _, boxes, labels = render_objects(3, i, names, size=160)     # what was drawn
        np.testing.assert_array_equal(rc.labels, labels)
        np.testing.assert_allclose(rc.boxes, boxes, atol=1e-6)
        assert rc.file.stat().st_ino == ry.file.stat().st_ino or rc.file.read_bytes() == ry.file.read_bytes()
    assert {int(label) for r in coco.records for label in r.labels} == {1, 2, 3, 4}
    data = json.loads((tmp_path / "ds" / "coco" / "annotations.json").read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "sign"), (2, "person"), (3, "wheel"), (4, "crate")]
    assert all(isinstance(v, int) for a in data["annotations"] for v in a["bbox"])
    line = (tmp_path / "ds" / "yolo" / "labels" / "000000.txt").read_text().splitlines()[0]
    assert line.split()[0] in {"0", "1", "2", "3"} and len(line.split()[1]) == 8        # ST's 6 decimals
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]                          # no temp folder left
    assert not [p for p in (tmp_path / "ds").rglob(".*")]


def test_single_layout_is_written_in_out_itself(tmp_path):
    assert write_synthetic_dataset(tmp_path / "c", ["crate"], 2, size=96, progress=False) == {"coco": tmp_path / "c"}
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["annotations.json", "images"]
    write_synthetic_dataset(tmp_path / "y", ["crate"], 2, size=96, layout="yolo", progress=False)
    assert sorted(p.name for p in (tmp_path / "y").iterdir()) == ["images", "labels"]
    c, y = open_dataset(tmp_path / "c", class_names=["crate"]), open_dataset(tmp_path / "y", class_names=["crate"])
    assert (c.layout, y.layout) == ("coco", "yolo")
    np.testing.assert_allclose(np.concatenate([r.boxes for r in c.records]),
                               np.concatenate([r.boxes for r in y.records]), atol=1e-6)


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_writes_the_same_files(tmp_path):
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        write_synthetic_dataset(tmp_path / name, ["person", "wheel"], 5, seed=seed, size=128, layout="both",
                                progress=False)
    a, b, c = (files_of(tmp_path / n) for n in "abc")
    assert len(a) == 1 + 5 + 5 + 5 and a == b
    assert a.keys() == c.keys() and a["coco/images/000000.jpg"] != c["coco/images/000000.jpg"]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = synthetic._render_objects
    monkeypatch.setattr(synthetic, "_render_objects", failing)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tmp_path / "ds", ["sign"], 5, size=96, layout="both", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_write_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"class_names: unknown shape\(s\) 'dog'; available shapes: person, sign, "
                                         r"crate, wheel"):
        write_synthetic_dataset(tmp_path / "x", ["person", "dog"], 3)
    with pytest.raises(ValueError, match=r"repeated class name"):
        write_synthetic_dataset(tmp_path / "x", ["sign", "sign"], 3)
    with pytest.raises(ValueError, match=r"num_images must be at least 1, got 0"):
        write_synthetic_dataset(tmp_path / "x", ["sign"], 0)
    with pytest.raises(ValueError, match=r"layout must be one of coco, yolo, both"):
        write_synthetic_dataset(tmp_path / "x", ["sign"], 1, layout="voc")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------- CLI


def cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        run(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return done.value.code, out, err


def test_cli_writes_reports_and_overwrites_only_its_own_output(tmp_path, capsys):
    out = tmp_path / "shapes"
    code, text, _ = cli(["--out", out, "--classes", "person,sign", "crate", "--images", 6, "--size", 128,
                         "--layout", "both", "--quiet"], capsys)
    assert code == 0
    assert "wrote 6 images 128x128" in text and f"coco: {out / 'coco'}" in text
    assert "class_names=['person', 'sign', 'crate']" in text
    assert len(open_dataset(out / "yolo", class_names=["person", "sign", "crate"])) == 6

    code, _, err = cli(["--out", out, "--classes", "person", "--images", 2, "--quiet"], capsys)
    assert code == 2 and err == f"error: --out {out}: folder holds an earlier dataset; pass --overwrite to replace it\n"
    code, _, _ = cli(["--out", out, "--classes", "wheel", "--images", 2, "--size", 96, "--overwrite", "--quiet"], capsys)
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["annotations.json", "images"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


@pytest.mark.parametrize("args, message", [
    (["--classes", "person", "dog"], "error: --classes: unknown shape(s) 'dog'; available shapes: person, sign, crate, wheel"),
    (["--classes", "sign", "--images", "0"], "error: --images must be at least 1, got 0"),
    (["--classes", "sign", "--size", "32"], "error: --size must be at least 64, got 32"),
])
def test_cli_bad_arguments_are_one_line(tmp_path, capsys, args, message):
    argv = ["--out", tmp_path / "o", "--images", "3", *args]
    code, _, err = cli(argv, capsys)
    assert code == 2 and err == message + "\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_refuses_a_foreign_folder_even_with_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "ssd_mnv1.synthetic", "--out", str(tmp_path), "--classes", "sign",
                           "--images", "2", "--overwrite"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == (f"error: --out {tmp_path}: folder is not empty (holds 'notes.txt', which a synthetic "
                           "dataset does not write); choose a new or empty folder\n")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
