"""Per-class evaluation and prediction of a multi-class model (issue #14): class names from the
checkpoint or ``--classes``, per-class ST-AP and COCO metrics, clear errors when names disagree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ssd_mnv1 import build_model
from ssd_mnv1.anchors import generate_anchors
from ssd_mnv1.box_coder import encode
from ssd_mnv1.checkpoint import save_checkpoint
from ssd_mnv1.cli import run
from ssd_mnv1.data import open_dataset
from ssd_mnv1.evaluation import evaluate, format_result
from ssd_mnv1.evaluate import main as evaluate_main
from ssd_mnv1.metrics import coco_metrics
from ssd_mnv1.metrics.coco import coco_metrics_by_class
from ssd_mnv1.predict import main as predict_main

CLASSES = ["rect", "ellipse", "triangle"]
SIZE = 160
FAST = ["--workers", "0", "--threads", "1", "--batch-size", "4"]


def _shapes_dataset(root: Path, images: int = 4) -> Path:
    """A COCO json + images/ of one red rectangle, green ellipse and blue triangle per image.

    Category ids are neither 1-based nor in the model's order, and one category ("star") has no
    boxes and is not the model's: labels must follow the names, not the ids."""
    (root / "images").mkdir(parents=True)
    cats = {"ellipse": 7, "rect": 3, "triangle": 11, "star": 1}
    data = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for n, i in cats.items()]}
    rng = np.random.default_rng(0)
    w, h = 128, 96
    for i in range(images):
        im = Image.new("RGB", (w, h), (200, 200, 200))
        canvas = ImageDraw.Draw(im)
        for k, name in enumerate(("rect", "ellipse", "triangle")):
            x0 = 4 + 40 * k + int(rng.integers(0, 6))
            y0 = int(rng.integers(4, 40))
            bw, bh = int(rng.integers(22, 34)), int(rng.integers(24, 50))
            box = (x0, y0, x0 + bw, y0 + bh)
            if name == "rect":
                canvas.rectangle(box, fill=(220, 40, 40))
            elif name == "ellipse":
                canvas.ellipse(box, fill=(40, 180, 40))
            else:
                canvas.polygon([(x0, y0 + bh), (x0 + bw // 2, y0), (x0 + bw, y0 + bh)], fill=(40, 60, 220))
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": 100 + i,
                                        "category_id": cats[name], "bbox": [x0, y0, bw, bh], "area": bw * bh,
                                        "iscrowd": 0})
        im.save(root / "images" / f"{i}.jpg", quality=95)
        data["images"].append({"id": 100 + i, "file_name": f"{i}.jpg", "width": w, "height": h})
    (root / "annotations.json").write_text(json.dumps(data))
    return root / "annotations.json"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return _shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def three_class_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(input_size=SIZE, class_names=CLASSES)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "shapes.ckpt")


def _cli_error(capsys, main, argv) -> str:
    """The CLI's one ``error:`` line (exit 2), as a user sees it."""
    with pytest.raises(SystemExit) as exit_info:
        run(main, [str(a) for a in argv])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ----------------------------------------------------------------------------------- evaluate


def test_evaluate_checkpoint_reports_every_class_by_its_stored_name(shapes, three_class_ckpt, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert evaluate_main([str(three_class_ckpt), "--data", str(shapes), "--metric", "all", "--json", str(out),
                          *FAST]) == 0
    result = json.loads(out.read_text())
    assert list(result["per_class"]) == CLASSES  # label order, names from the checkpoint
    for name, values in result["per_class"].items():
        assert set(values) == {"st_ap_20", "st_ap_25", "coco"}, name
        assert 0.0 <= values["st_ap_20"] <= 100.0 and 0.0 <= values["st_ap_25"] <= 100.0
        assert 0.0 <= values["coco"]["AP"] <= 100.0 and set(values["coco"]) == set(result["coco"])
    for key in ("st_ap_20", "st_ap_25"):  # the top level is the mean over classes (ST's mAP)
        mean = np.mean([v[key] for v in result["per_class"].values()])
        assert result[key] == pytest.approx(mean, abs=1e-3)
    text = capsys.readouterr().out
    assert all(f"\n  {name} " in text for name in CLASSES)  # the per-class table


def test_one_class_json_keeps_its_keys_and_adds_person(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(input_size=SIZE), tmp_path / "person.ckpt")
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (64, 48), (90, 90, 90)).save(root / "images" / "a.jpg")
    (root / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 20, 20]}],
        "categories": [{"id": 1, "name": "person"}]}))
    out = tmp_path / "m.json"
    evaluate_main([str(ckpt), "--data", str(root), "--json", str(out), *FAST])
    result = json.loads(out.read_text())
    assert list(result) == ["images", "st_ap_20", "per_class"]
    assert result["per_class"] == {"person": {"st_ap_20": result["st_ap_20"]}}
    assert "class " not in capsys.readouterr().out  # no table for one class


def test_class_missing_from_dataset_is_one_clear_error(shapes, tmp_path, capsys):
    ckpt = save_checkpoint(build_model(input_size=SIZE, class_names=["rect", "zebra", "triangle"]),
                           tmp_path / "zebra.ckpt")
    line = _cli_error(capsys, evaluate_main, [ckpt, "--data", shapes.parent, *FAST])
    for fragment in (str(shapes), "'zebra'", "available: ellipse, rect, star, triangle",
                     f"the classes stored in {ckpt}: rect, zebra, triangle"):
        assert fragment in line, line


def test_classes_option_must_equal_the_checkpoint_names(shapes, three_class_ckpt, tmp_path, capsys):
    wrong = ["ellipse", "rect", "triangle"]
    line = _cli_error(capsys, evaluate_main, [three_class_ckpt, "--data", shapes, "--classes", *wrong, *FAST])
    assert f"--classes {wrong}" in line and f"stored in {three_class_ckpt}, {CLASSES}" in line, line
    image = shapes.parent / "images" / "0.jpg"
    line = _cli_error(capsys, predict_main, [three_class_ckpt, image, "--out", tmp_path / "o", "--classes", "rect"])
    assert "--classes ['rect']" in line and str(CLASSES) in line, line
    # the same names are accepted
    assert evaluate_main([str(three_class_ckpt), "--data", str(shapes), "--classes", *CLASSES, *FAST]) == 0


@pytest.fixture(scope="module")
def three_class_onnx(tmp_path_factory) -> Path:
    pytest.importorskip("onnxsim")
    pytest.importorskip("onnxruntime")
    from ssd_mnv1.export.onnx_stage import export_onnx

    torch.manual_seed(0)
    model = build_model(input_size=SIZE, class_names=CLASSES)
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "shapes.onnx")


def test_deployed_file_takes_classes_and_checks_their_count(shapes, three_class_onnx, tmp_path, capsys):
    """An .onnx stores no names: its 4 score columns need --classes with 3 names."""
    line = _cli_error(capsys, evaluate_main, [three_class_onnx, "--data", shapes, *FAST])
    assert str(three_class_onnx) in line and "4 score columns" in line and "pass --classes with its 3 names" in line
    line = _cli_error(capsys, evaluate_main,
                      [three_class_onnx, "--data", shapes, "--classes", "rect", "ellipse", *FAST])
    assert "4 score columns" in line and "--classes gives 2 name(s) ['rect', 'ellipse']" in line, line
    line = _cli_error(capsys, predict_main, [three_class_onnx, shapes.parent / "images", "--out", tmp_path / "o"])
    assert "pass --classes" in line
    out = tmp_path / "m.json"
    assert evaluate_main([str(three_class_onnx), "--data", str(shapes), "--classes", *CLASSES, "--json", str(out),
                          *FAST]) == 0
    assert list(json.loads(out.read_text())["per_class"]) == CLASSES


class GroundTruthRunner:
    """What a perfect detector of ``keep`` (1-based labels) outputs: one anchor per GT box, its
    offsets encoding that box exactly and score 0.9 for its class. The image to answer for is
    read from pixel (0, 0), which the test sets to the record index."""

    name = "ground-truth"
    class_names = None

    def __init__(self, dataset, keep: set[int]):
        self.records, self.keep, self.input_size = dataset.records, keep, SIZE
        self.columns = 1 + len(dataset.class_names)
        self.anchors = generate_anchors(SIZE)

    def __call__(self, images: np.ndarray):
        n, na = len(images), len(self.anchors)
        scores = np.zeros((n, na, self.columns), np.float32)
        scores[..., 0] = 1.0
        offsets = np.zeros((n, na, 4), np.float32)
        for b, image in enumerate(images):
            rec = self.records[int(image[0, 0, 0])]
            rows = [k for k, label in enumerate(rec.labels) if int(label) in self.keep]
            for anchor, k in enumerate(rows):
                scores[b, anchor] = 0.0
                scores[b, anchor, 0], scores[b, anchor, int(rec.labels[k])] = 0.1, 0.9
                offsets[b, anchor] = encode(torch.as_tensor(rec.boxes[k]), self.anchors[anchor]).numpy()
        return scores, offsets, np.broadcast_to(self.anchors.numpy(), (n, na, 4)).copy()


def _indexed_images(dataset) -> np.ndarray:
    """Blank pre-resized images whose pixel (0, 0) is the record index, for :class:`GroundTruthRunner`."""
    images = np.zeros((len(dataset), SIZE, SIZE, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(len(dataset))
    return images


def test_per_class_values_are_each_class_own(shapes):
    """Perfect detections of rect and triangle, none of ellipse: 100 / 0 / 100 per class under
    every metric, the ST mean 66.67, and the names on the right classes."""
    dataset = open_dataset(shapes, class_names=CLASSES)
    images = _indexed_images(dataset)
    result = evaluate(GroundTruthRunner(dataset, keep={1, 3}), dataset, ("st20", "st25", "coco"),
                      images=images, progress=False)
    expected = {"rect": 100.0, "ellipse": 0.0, "triangle": 100.0}
    for key in ("st_ap_20", "st_ap_25"):
        assert {n: v[key] for n, v in result.per_class.items()} == pytest.approx(expected)
        assert result.to_json()[key] == pytest.approx(200 / 3, abs=1e-3)
    assert {n: v["coco"]["AP"] for n, v in result.per_class.items()} == pytest.approx(expected)
    assert {n: v["coco"]["AP50"] for n, v in result.per_class.items()} == pytest.approx(expected)
    assert result.coco["AP"] == pytest.approx(200 / 3, abs=1e-3)
    table = format_result(result).splitlines()
    assert [line.split()[0] for line in table[-3:]] == CLASSES and table[-2].split()[1:3] == ["0.00", "0.00"]


def test_class_without_ground_truth_is_null_and_warned(shapes):
    """A model class the evaluated images never show has no AP: null, and out of the mean."""
    dataset = open_dataset(shapes, class_names=CLASSES)
    for rec in dataset.records:  # drop the triangles: the dataset still names the class
        keep = rec.labels != 3
        rec.boxes, rec.labels, rec.iscrowd, rec.areas = rec.boxes[keep], rec.labels[keep], rec.iscrowd[keep], \
            rec.areas[keep]
    images = _indexed_images(dataset)
    with pytest.warns(UserWarning, match="triangle have no ground truth"):
        result = evaluate(GroundTruthRunner(dataset, keep={1}), dataset, ("st20", "coco"), images=images,
                          progress=False)
    assert result.per_class["triangle"] == {"st_ap_20": None, "coco": None}
    assert result.per_class["rect"]["st_ap_20"] == pytest.approx(100.0)
    assert result.st_ap["st20"] == pytest.approx(50.0)  # mean of rect (100) and ellipse (0)


def test_evaluate_rejects_names_that_do_not_fit_the_score_columns(shapes):
    dataset = open_dataset(shapes, class_names=CLASSES)
    with pytest.raises(ValueError, match=r"ground-truth has 4 score columns .* 2 class name\(s\) "
                                         r"\['rect', 'ellipse'\]"):
        evaluate(GroundTruthRunner(dataset, keep={1}), dataset, class_names=["rect", "ellipse"],
                 images=_indexed_images(dataset), progress=False)


def test_coco_per_category_summaries_leave_the_overall_unchanged(shapes):
    dataset = open_dataset(shapes, class_names=CLASSES)
    from ssd_mnv1.postprocess import Detections

    dets = {}
    for rec in dataset.records:  # rects exact, ellipses a quarter width off (IoU 0.6), no triangles
        keep = rec.labels != 3
        boxes = rec.boxes[keep].copy()
        shift = (boxes[:, 2] - boxes[:, 0]) / 4
        boxes[rec.labels[keep] == 2] += np.stack([shift, 0 * shift, shift, 0 * shift], 1)[rec.labels[keep] == 2]
        dets[rec.image_id] = Detections(torch.as_tensor(boxes), torch.full((len(boxes),), 0.8),
                                        torch.as_tensor(rec.labels[keep]))
    overall, by_label = coco_metrics_by_class(dataset.records, dets)
    np.testing.assert_equal(overall, coco_metrics(dataset.records, dets))  # NaN (no large boxes) included
    assert sorted(by_label) == [1, 2, 3]
    assert by_label[1]["AP"] == pytest.approx(1.0) and by_label[3]["AP"] == 0.0
    assert by_label[2]["AP50"] == pytest.approx(1.0) and by_label[2]["AP75"] == 0.0
    assert overall["AP"] == pytest.approx(np.mean([v["AP"] for v in by_label.values()]))


# ------------------------------------------------------------------------------------ predict


def test_predict_names_boxes_with_the_stored_classes(shapes, three_class_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict_main([str(three_class_ckpt), str(shapes.parent / "images" / "0.jpg"), "--out", str(out),
                         "--score", "0.0", "--max-det", "30"]) == 0
    report = json.loads((out / "detections.json").read_text())
    assert report["classes"] == CLASSES
    dets = report["images"][0]["detections"]
    assert dets and all(d["label"] == CLASSES[d["class_id"] - 1] for d in dets)
    assert {d["label"] for d in dets} <= set(CLASSES) and len({d["label"] for d in dets}) > 1
    assert (out / "0.png").is_file()
