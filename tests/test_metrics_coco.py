"""COCO metrics through pycocotools, from records + normalized detections."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ssd_mnv1.metrics import coco_metrics
from ssd_mnv1.postprocess import Detections

KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl"}


@dataclass
class Rec:
    image_id: int
    file: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    areas: np.ndarray


def _record(image_id, width, height, boxes_px, crowd=None):
    b = np.asarray(boxes_px, np.float64).reshape(-1, 4)
    norm = (b / [width, height, width, height]).astype(np.float32)
    crowd = np.zeros(len(b), bool) if crowd is None else np.asarray(crowd, bool)
    areas = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).astype(np.float32)
    return Rec(image_id, Path(f"{image_id}.jpg"), width, height, norm, np.ones(len(b), np.int64), crowd, areas)


def _synthetic():
    # small (< 32^2), medium and large boxes, non-square images, one crowd region
    return [
        _record(11, 640, 480, [[10, 10, 30, 30], [100, 50, 160, 130], [300, 100, 600, 470]]),
        _record(12, 320, 512, [[5, 200, 25, 215], [40, 40, 300, 500], [0, 0, 320, 100]], crowd=[0, 0, 1]),
        _record(13, 500, 333, [[200, 100, 260, 190]]),
    ]


def _det(boxes, scores, labels) -> Detections:
    return Detections(torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
                      torch.as_tensor(np.asarray(scores, np.float32)), torch.as_tensor(np.asarray(labels, np.int64)))


def _gt_as_detections(records):
    out = {}
    for r in records:
        keep = ~r.iscrowd
        out[r.image_id] = _det(r.boxes[keep], np.ones(int(keep.sum())), r.labels[keep])
    return out


def test_ground_truth_fed_back_scores_one_and_crowd_is_ignored():
    records = _synthetic()
    res = coco_metrics(records, _gt_as_detections(records))
    assert set(res) == KEYS
    for key in KEYS:
        assert res[key] == pytest.approx(1.0), key


def test_a_detection_on_a_crowd_region_is_not_a_false_positive():
    records = _synthetic()
    dets = _gt_as_detections(records)
    crowd = records[1].boxes[2:3]
    boxes, scores, labels = dets[12].numpy()
    dets[12] = _det(np.concatenate([crowd, boxes]), np.concatenate([[2.0], scores]), np.concatenate([[1], labels]))
    assert coco_metrics(records, dets)["AP"] == pytest.approx(1.0)
    # the same box on an image without a crowd region is an FP ranked first
    boxes, scores, labels = dets[13].numpy()
    dets[13] = _det(np.concatenate([[[0.0, 0.0, 0.5, 0.5]], boxes]), np.concatenate([[2.0], scores]),
                    np.concatenate([[1], labels]))
    assert coco_metrics(records, dets)["AP"] < 1.0


def test_an_image_without_ground_truth_only_counts_through_its_detections():
    records = _synthetic() + [_record(14, 300, 200, np.zeros((0, 4)))]
    dets = _gt_as_detections(records)
    assert len(dets[14]) == 0
    assert coco_metrics(records, dets)["AP"] == pytest.approx(1.0)
    # a confident box on the empty image is a false positive ranked first
    dets[14] = _det([[0.1, 0.1, 0.6, 0.6]], [2.0], [1])
    assert coco_metrics(records, dets)["AP"] < 1.0


def test_only_the_top_max_detections_per_image_count():
    rec = _record(1, 200, 100, [[20, 20, 60, 80]])
    fps = np.array([[0.6, 0.1, 0.7, 0.2], [0.7, 0.1, 0.8, 0.2], [0.8, 0.1, 0.9, 0.2]], np.float32)
    boxes = np.concatenate([fps, rec.boxes])
    dets = {1: _det(boxes, [0.9, 0.8, 0.7, 0.6], np.ones(4))}
    assert coco_metrics([rec], dets, max_detections=3)["AP"] == 0.0  # the true box is 4th
    full = coco_metrics([rec], dets)["AP"]
    assert 0.0 < full < 1.0


def test_images_without_detections_count_as_misses_and_unknown_images_are_rejected():
    records = _synthetic()
    dets = _gt_as_detections(records)
    del dets[13]
    assert coco_metrics(records, dets)["AP"] < 1.0
    assert coco_metrics(records, {})["AP"] == 0.0
    with pytest.raises(ValueError, match="not in the records"):
        coco_metrics(records, {999: _det(np.zeros((1, 4)), np.ones(1), np.ones(1))})


def _coco_person_val_records(root: Path):
    ann = json.loads((root / "annotations.json").read_text())
    by_image: dict[int, list] = {}
    for a in ann["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    records = []
    for im in ann["images"]:
        anns = by_image.get(im["id"], [])
        w, h = im["width"], im["height"]
        boxes = np.array([[x / w, y / h, (x + bw) / w, (y + bh) / h] for x, y, bw, bh in (a["bbox"] for a in anns)],
                         np.float32).reshape(-1, 4)
        records.append(Rec(im["id"], root / "images" / im["file_name"], w, h, boxes, np.ones(len(anns), np.int64),
                           np.array([a["iscrowd"] for a in anns], bool),
                           np.array([a["area"] for a in anns], np.float32)))
    return records


def test_coco_person_val_ground_truth_fed_back_scores_one(coco_person_val):
    records = _coco_person_val_records(coco_person_val)
    res = coco_metrics(records, _gt_as_detections(records))
    for key in KEYS:
        assert res[key] == pytest.approx(1.0, abs=1e-9), key
