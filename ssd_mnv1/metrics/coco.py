"""Standard COCO box metrics with pycocotools (st_reference.md §7.4, "COCO metrics").

Boxes are mapped back to the original image (the resize is a pure stretch) in float; crowd GT and
the small/medium/large split by segmentation area are handled by pycocotools itself.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from ..postprocess import Detections

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _gt_dataset(records) -> dict:
    images, annotations, cats = [], [], set()
    ann_id = 1
    for rec in records:
        w, h = float(rec.width), float(rec.height)
        images.append({"id": int(rec.image_id), "width": int(rec.width), "height": int(rec.height)})
        boxes = np.asarray(rec.boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(rec.labels).reshape(-1)
        crowd = np.asarray(rec.iscrowd).reshape(-1)
        areas = np.asarray(rec.areas, dtype=np.float64).reshape(-1)
        for k in range(len(boxes)):
            x1, y1, x2, y2 = boxes[k] * (w, h, w, h)
            annotations.append({"id": ann_id, "image_id": int(rec.image_id),
                                "category_id": int(labels[k]),
                                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                "area": float(areas[k]), "iscrowd": int(bool(crowd[k]))})
            cats.add(int(labels[k]))
            ann_id += 1
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": "person" if c == 1 else str(c)} for c in sorted(cats)]}


def _detection_list(records, detections: dict[int, Detections], max_detections: int) -> list[dict]:
    sizes = {int(r.image_id): (float(r.width), float(r.height)) for r in records}
    unknown = sorted(set(int(k) for k in detections) - set(sizes))
    if unknown:
        raise ValueError(f"detections for {len(unknown)} image(s) not in the records, e.g. {unknown[:5]}")
    out = []
    for image_id, det in detections.items():
        w, h = sizes[int(image_id)]
        boxes, scores, labels = det.numpy()
        boxes, scores = boxes.astype(np.float64), scores.astype(np.float64)
        order = np.argsort(-scores, kind="stable")[:max_detections]
        px = boxes[order] * (w, h, w, h)
        for (x1, y1, x2, y2), s, c in zip(px.tolist(), scores[order].tolist(), labels[order].tolist()):
            out.append({"image_id": int(image_id), "category_id": int(c),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    return out


def _summarize(precision: np.ndarray, iou_thrs: np.ndarray, iou: float | None, area: int, m: int) -> float:
    # precision: [T, R, K, A, M]; -1 marks "no GT" entries (pycocotools' own _summarize)
    p = precision
    if iou is not None:
        p = p[np.flatnonzero(np.isclose(iou_thrs, iou))]
    p = p[:, :, :, area, m]
    valid = p[p > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def coco_metrics(records, detections: dict[int, Detections], max_detections: int = 100) -> dict:
    """COCO AP@[.5:.95], AP50, AP75, APs, APm, APl (0..1) with pycocotools' COCOeval.

    ``records``: objects with ``image_id, width, height, boxes`` (normalized xyxy), ``labels``
    (category ids), ``iscrowd`` and ``areas`` (pixel area used for the size split).
    ``detections``: ``{image_id: Detections}`` (normalized boxes, 1-based labels); the top
    ``max_detections`` per image by score are kept and mapped to original pixels in float.
    ``params.imgIds`` = the records' ids (images without detections count as misses).
    A value is NaN where COCOeval has nothing to average (pycocotools prints -1); all values are
    0 when there are no detections at all.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    records = list(records)
    dets = _detection_list(records, detections, int(max_detections))
    if not dets:
        return {k: 0.0 for k in KEYS}
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = _gt_dataset(records)
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(int(r.image_id) for r in records)
        ev.params.catIds = sorted(int(c["id"]) for c in gt.dataset["categories"])
        ev.params.maxDets = sorted({1, 10, int(max_detections)})
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"]
    thr = ev.params.iouThrs
    m = ev.params.maxDets.index(int(max_detections))
    return {"AP": _summarize(prec, thr, None, 0, m), "AP50": _summarize(prec, thr, 0.5, 0, m),
            "AP75": _summarize(prec, thr, 0.75, 0, m), "APs": _summarize(prec, thr, None, 1, m),
            "APm": _summarize(prec, thr, None, 2, m), "APl": _summarize(prec, thr, None, 3, m)}
