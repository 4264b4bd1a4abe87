"""Standard COCO box metrics with pycocotools (docs/st_model.md §7.4, "COCO metrics").

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


def _summarize(precision: np.ndarray, iou_thrs: np.ndarray, iou: float | None, area: int, m: int,
               k: int | None = None) -> float:
    # precision: [T, R, K, A, M]; -1 marks "no GT" entries (pycocotools' own _summarize);
    # ``k``: one category's slice of the K axis instead of all of them
    p = precision
    if iou is not None:
        p = p[np.flatnonzero(np.isclose(iou_thrs, iou))]
    p = p[:, :, :, area, m] if k is None else p[:, :, k, area, m]
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
    0 when there are no detections at all. :func:`coco_metrics_by_class` adds each category's.
    """
    return coco_metrics_by_class(records, detections, max_detections)[0]


def coco_metrics_by_class(records, detections: dict[int, Detections],
                          max_detections: int = 100) -> tuple[dict, dict[int, dict]]:
    """:func:`coco_metrics` and the same six numbers per category: ``(all, {label: {...}})``.

    One COCOeval run: a category's numbers average only its slice of the precision array (the
    K axis), as pycocotools' ``_summarize`` does over all of them, so the all-category values are
    unchanged. Only labels present in the GT are categories (detections of others are ignored).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    records = list(records)
    dets = _detection_list(records, detections, int(max_detections))
    labels = sorted({int(c) for r in records for c in np.asarray(r.labels).reshape(-1)})
    if not dets:
        return {k: 0.0 for k in KEYS}, {c: {k: 0.0 for k in KEYS} for c in labels}
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

    def summary(k: int | None) -> dict:
        return {"AP": _summarize(prec, thr, None, 0, m, k), "AP50": _summarize(prec, thr, 0.5, 0, m, k),
                "AP75": _summarize(prec, thr, 0.75, 0, m, k), "APs": _summarize(prec, thr, None, 1, m, k),
                "APm": _summarize(prec, thr, None, 2, m, k), "APl": _summarize(prec, thr, None, 3, m, k)}

    return summary(None), {int(c): summary(k) for k, c in enumerate(ev.params.catIds)}
