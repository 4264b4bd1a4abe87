"""ST's own AP metric ("ST-AP"), in its two code versions (docs/st_model.md §6, §7).

* ``"st20"``: ST model zoo 2.0 (Padilla "Object-Detection-Metrics" evaluator), the pipeline most
  likely behind the published 2.0 numbers: Padilla rasterization of the detections of
  ``postprocess(..., variant="st20")``.
* ``"st25"``: the 2025 code (``objdet_metrics``): boxes rounded to pixels of the S x S input, on the
  detections of ``postprocess(..., variant="st25")``.

Both then match detections to ground truth VOC-style at IoU >= 0.4 with the +1-pixel IoU on integer
pixel boxes of the S x S model input, and integrate precision over recall at every point. Crowd
boxes are ordinary ground truth and images without ground truth are left out (ST's dataset
converter drops them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..postprocess import Detections

#: ST-AP variants: ST's two evaluator versions, each scoring the post-processing variant of its name.
VARIANTS = ("st20", "st25")


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown ST-AP variant {variant!r}; allowed values: {', '.join(VARIANTS)}")
    return variant


# --------------------------------------------------------------------------------------------------
# Rasterization to integer pixels of the S x S model input
# --------------------------------------------------------------------------------------------------


def rasterize_st25_gt(boxes_norm, input_size: int) -> np.ndarray:
    """2025 GT: x = round-half-even(S * corner) in float32 (tf.round), clipped to [0, S-1]."""
    b = np.asarray(boxes_norm, dtype=np.float32).reshape(-1, 4)
    px = np.rint(b * np.float32(input_size))
    return np.clip(px, 0, input_size - 1).astype(np.int64)


def rasterize_st25_detections(boxes_norm, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """2025 detections: x = round-half-even(S * corner) in float32, not clipped (can reach S).

    Returns ``(pixels (D, 4) int64, keep (D,) bool)``: ST drops boxes whose coordinates sum to 0
    (its padding filter keeps only a sum > 0), which also drops a real box rounded to all zeros.
    """
    b = np.asarray(boxes_norm, dtype=np.float32).reshape(-1, 4)
    px = np.rint(b * np.float32(input_size)).astype(np.int64)
    return px, px.sum(axis=1) > 0


def rasterize_padilla(boxes_norm, input_size: int) -> np.ndarray:
    """2.0 (Padilla) for GT and detections alike, in float64 (Python floats).

    Corners -> relative (cx, cy, w, h) -> x1 = round((2cx - w) * S / 2), x2 = x1 + round(w * S)
    (likewise y; Python round = half to even), then x1, y1 >= 0 and x2, y2 <= S - 1.
    """
    b = np.asarray(boxes_norm, dtype=np.float64).reshape(-1, 4)
    s = float(input_size)
    c = (b[:, :2] + b[:, 2:]) / 2.0
    wh = b[:, 2:] - b[:, :2]
    lo = np.rint((2.0 * c - wh) * s / 2.0)
    hi = lo + np.rint(wh * s)
    lo = np.maximum(lo, 0.0)
    hi = np.minimum(hi, s - 1.0)
    return np.concatenate([lo, hi], axis=1).astype(np.int64)


def rasterize(boxes_norm, input_size: int, variant: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch: ``kind`` is ``"gt"`` or ``"det"``; returns ``(pixels int64 (K, 4), keep bool (K,))``.

    st25 GT rows that rasterize to all zeros are dropped as ST's padding filter does.
    """
    _check_variant(variant)
    if kind not in ("gt", "det"):
        raise ValueError(f"kind must be 'gt' or 'det', got {kind!r}")
    if variant == "st20":
        px = rasterize_padilla(boxes_norm, input_size)
        return px, np.ones(len(px), dtype=bool)
    if kind == "det":
        return rasterize_st25_detections(boxes_norm, input_size)
    px = rasterize_st25_gt(boxes_norm, input_size)
    return px, px.sum(axis=1) > 0


# --------------------------------------------------------------------------------------------------
# Matching and AP
# --------------------------------------------------------------------------------------------------


def iou_plus_one(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(D, G) IoU of integer pixel boxes with ST's +1-pixel convention, 0 when disjoint (strict)."""
    d = np.asarray(det, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    return _iou_plus_one(d[:, None, :], g[None, :, :])


def _iou_plus_one(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Elementwise +1-pixel IoU of broadcastable float64 (..., 4) boxes: the one formula behind
    the (D, G) matrix and the per-pair matching, so that both give the same bits."""
    disjoint = ((d[..., 0] > g[..., 2]) | (d[..., 2] < g[..., 0])
                | (d[..., 1] > g[..., 3]) | (d[..., 3] < g[..., 1]))
    iw = np.minimum(d[..., 2], g[..., 2]) - np.maximum(d[..., 0], g[..., 0]) + 1.0
    ih = np.minimum(d[..., 3], g[..., 3]) - np.maximum(d[..., 1], g[..., 1]) + 1.0
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area_d = (d[..., 2] - d[..., 0] + 1.0) * (d[..., 3] - d[..., 1] + 1.0)
    area_g = (g[..., 2] - g[..., 0] + 1.0) * (g[..., 3] - g[..., 1] + 1.0)
    union = area_d + area_g - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.where(disjoint, 0.0, iou)


def _all_point_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def average_precision(det_image_ids, det_boxes_px, det_scores, gt_boxes_px_by_image: dict,
                      iou_threshold: float = 0.4) -> tuple[float, np.ndarray, np.ndarray]:
    """ST's single-class AP (docs/st_model.md §7.1 step 5) on integer pixel boxes.

    Detections are visited by descending score (stable sort: ties keep the given order). Each takes
    the GT of its image with the highest +1-pixel IoU (first wins ties); IoU >= ``iou_threshold``
    and that GT unmatched -> TP (GT now matched), otherwise FP. AP is the all-point interpolated
    area. Returns ``(ap, precision, recall)``, the cumulative arrays in visiting order. No detections
    or no GT -> AP 0.
    """
    ids = np.asarray(det_image_ids).reshape(-1)
    boxes = np.asarray(det_boxes_px).reshape(-1, 4)
    scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    if not (len(ids) == len(boxes) == len(scores)):
        raise ValueError(f"detection arrays differ in length: {len(ids)} ids, {len(boxes)} boxes, "
                         f"{len(scores)} scores")
    gts = [np.asarray(g).reshape(-1, 4) for g in gt_boxes_px_by_image.values()]
    counts = np.array([len(g) for g in gts], dtype=np.int64)
    starts = np.cumsum(counts) - counts
    # GT rows of each detection's image as a (start, count) range of the concatenated GT (a dict
    # lookup per image with detections; detections of an image absent from the dict have none)
    where = {key: k for k, key in enumerate(gt_boxes_px_by_image)}
    uniq, inverse = np.unique(ids, return_inverse=True)
    slot = np.array([where.get(key, -1) for key in uniq.tolist()], dtype=np.int64)[inverse.reshape(-1)]
    known = slot >= 0
    det_start = np.where(known, starts[slot], 0)
    det_count = np.where(known, counts[slot], 0)
    gt_all = np.concatenate(gts) if gts else np.zeros((0, 4))
    return _match_and_integrate(boxes, scores, det_start, det_count, gt_all, int(counts.sum()), iou_threshold)


def _match_and_integrate(boxes: np.ndarray, scores: np.ndarray, det_start: np.ndarray, det_count: np.ndarray,
                         gt_boxes: np.ndarray, npos: int, iou_threshold: float) -> tuple[float, np.ndarray, np.ndarray]:
    """:func:`average_precision` once each detection knows its image's GT rows: rows
    ``det_start[d] : det_start[d] + det_count[d]`` of ``gt_boxes`` (global GT index = row).

    VOC-style greedy matching without a loop: a detection's best GT does not depend on what is
    already matched, so all (detection, GT of its image) pairs are scored at once; only "first
    detection to claim a GT" is sequential, and that is the first occurrence in visiting order.
    """
    _, tp = _greedy_matches(boxes, scores, det_start, det_count, gt_boxes, iou_threshold)
    return _integrate(tp, npos)


def _integrate(tp: np.ndarray, npos: int) -> tuple[float, np.ndarray, np.ndarray]:
    """All-point AP and the cumulative precision / recall of TP flags in visiting order."""
    if len(tp) == 0:
        return 0.0, np.zeros(0), np.zeros(0)
    acc_tp = np.cumsum(tp)
    acc_fp = np.cumsum(1.0 - tp)
    precision = acc_tp / (acc_tp + acc_fp)
    if npos == 0:
        return 0.0, precision, np.zeros(len(tp))
    recall = acc_tp / npos
    return _all_point_ap(precision, recall), precision, recall


def _greedy_matches(boxes: np.ndarray, scores: np.ndarray, det_start: np.ndarray, det_count: np.ndarray,
                    gt_boxes: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The visiting order (descending score, stable) and each visited detection's TP flag (1.0/0.0)."""
    order = np.argsort(-scores, kind="stable")
    if len(order) == 0:
        return order, np.zeros(0)
    boxes, det_start, det_count = boxes[order], det_start[order], det_count[order]
    n = len(order)
    pair_det = np.repeat(np.arange(n), det_count)
    first_pair = np.cumsum(det_count) - det_count
    pair_gt = np.repeat(det_start - first_pair, det_count) + np.arange(len(pair_det))
    iou = _iou_plus_one(np.asarray(boxes, np.float64)[pair_det], np.asarray(gt_boxes, np.float64)[pair_gt])

    best_iou = np.full(n, -1.0)
    best_gt = np.full(n, -1, dtype=np.int64)
    has = np.flatnonzero(det_count > 0)
    if has.size:
        seg_max = np.maximum.reduceat(iou, first_pair[has])
        is_max = np.flatnonzero(iou == np.repeat(seg_max, det_count[has]))
        dets, first = np.unique(pair_det[is_max], return_index=True)  # pairs run by GT row: first max wins
        best_iou[dets] = seg_max
        best_gt[dets] = pair_gt[is_max[first]]

    hit = np.flatnonzero(best_iou >= iou_threshold)
    _, first = np.unique(best_gt[hit], return_index=True)
    tp = np.zeros(n)
    tp[hit[first]] = 1.0
    return order, tp


# --------------------------------------------------------------------------------------------------
# Evaluator
# --------------------------------------------------------------------------------------------------


@dataclass
class RankedMatches:
    """One class's detections in ST-AP's visiting order with their TP flags, and its GT count per
    image: enough to recompute the AP on any resample of the images (:mod:`.bootstrap`), since a
    detection only ever matches GT of its own image."""

    image_index: np.ndarray  # (D,) each detection's image, an index into STAPResult.image_ids
    tp: np.ndarray           # (D,) 1.0 true positive, 0.0 false positive
    gt_counts: np.ndarray    # (I,) the class's GT boxes in each image


@dataclass
class STAPResult:
    """ST-AP over a dataset. ``ap`` and ``per_class`` are in 0..1.

    ``precision``/``recall``: cumulative arrays of the first class present in the GT (the only one
    for the person detector); ``per_class_precision``/``per_class_recall`` hold every class.
    ``mean_precision``/``mean_recall`` are what ST prints next to the AP: the means of those
    cumulative arrays, averaged over classes (not an operating point).
    """

    ap: float
    per_class: dict[int, float]
    precision: np.ndarray
    recall: np.ndarray
    num_images: int
    num_gt: int
    num_detections: int
    skipped_images: int
    variant: str
    input_size: int = 0
    iou_threshold: float = 0.4
    per_class_precision: dict[int, np.ndarray] = field(default_factory=dict)
    per_class_recall: dict[int, np.ndarray] = field(default_factory=dict)
    mean_precision: float = 0.0
    mean_recall: float = 0.0
    image_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the images scored
    matches: dict[int, RankedMatches] = field(default_factory=dict)  # per class with GT


#: Flat float64 states: per image (``image_ids`` and its detection/GT row counts, or ``skipped_ids``
#: for an image without GT), per detection row and per GT row. One dtype and one dimension for all,
#: so that ranks without data gather like the others.
_STATES = ("image_ids", "det_counts", "gt_counts", "skipped_ids",
           "det_boxes", "det_scores", "det_labels", "gt_boxes", "gt_labels")


class STAPEvaluator(Metric):
    """ST-AP of detections (:func:`ssd_mnv1.postprocess`, the variant of the same name) against GT.

    Boxes are normalized (x1, y1, x2, y2 in [0, 1] of the image; the resize to S x S is a pure
    stretch) and rasterized to pixels of the S x S input with the variant's rule. Images without GT
    are left out (counted in ``skipped_images``).

    Detections are ranked over the whole dataset; score ties go by ascending image id, then by the
    order within the image. With dataset indices as ids, that is the single-process order on any
    number of ranks: the states are gathered (torchmetrics' ``cat``) and an image seen twice (a
    DistributedSampler pads by repeating images) counts once, as first gathered. ``kwargs`` go to
    torchmetrics' ``Metric``: ``sync_on_compute=False`` scores this process's images only (a call
    that not every rank makes would otherwise wait for the others).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, input_size: int, variant: str = "st20", iou_threshold: float = 0.4, **kwargs):
        super().__init__(**kwargs)
        self.variant = _check_variant(variant)
        self.input_size = int(input_size)
        if self.input_size <= 0:
            raise ValueError(f"input_size must be positive, got {input_size}")
        self.iou_threshold = float(iou_threshold)
        for name in _STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)
        self._seen: set[int] = set()

    def reset(self) -> None:
        super().reset()
        self._seen = set()

    def update(self, detections: Sequence[Detections], gt_boxes: Sequence, gt_labels: Sequence,
               image_ids: Sequence[int]) -> None:
        """Add images: their detections, GT boxes (K, 4) and 1-based labels (K,), and ids."""
        if not len(detections) == len(gt_boxes) == len(gt_labels) == len(image_ids):
            raise ValueError(f"{len(detections)} detections, {len(gt_boxes)} GT boxes, {len(gt_labels)} GT "
                             f"labels and {len(image_ids)} image ids: one of each per image")
        rows: dict[str, list] = {name: [] for name in _STATES}
        for det, gt, labels, image_id in zip(detections, gt_boxes, gt_labels, image_ids):
            image_id = int(image_id)
            if image_id in self._seen:
                raise ValueError(f"image {image_id} was already added to this evaluator")
            self._seen.add(image_id)
            labels = _numpy(labels).astype(np.int64).reshape(-1)
            gt = _numpy(gt).astype(np.float32).reshape(-1, 4)  # ST's GT is float32
            if len(gt) != len(labels):
                raise ValueError(f"image {image_id}: {len(gt)} GT boxes but {len(labels)} labels")
            if len(labels) == 0:
                rows["skipped_ids"].append([image_id])
                continue
            boxes, scores, det_labels = det.numpy()
            if not len(boxes) == len(scores) == len(det_labels):
                raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and "
                                 f"{len(det_labels)} labels")
            for name, value in (("image_ids", [image_id]), ("det_counts", [len(scores)]),
                                ("gt_counts", [len(labels)]), ("det_boxes", boxes),
                                ("det_scores", scores.astype(np.float32)), ("det_labels", det_labels),
                                ("gt_boxes", gt), ("gt_labels", labels)):
                rows[name].append(value)
        # one tensor per state and call, even an empty one: every rank that saw a batch has a state
        for name, parts in rows.items():
            flat = np.concatenate([np.asarray(p, np.float64).reshape(-1) for p in parts]) if parts else np.zeros(0)
            getattr(self, name).append(torch.from_numpy(flat).to(self.device))

    def compute(self) -> STAPResult:
        s = {name: _cat(getattr(self, name)) for name in _STATES}
        ids = s["image_ids"].astype(np.int64)
        det_counts, gt_counts = s["det_counts"].astype(np.int64), s["gt_counts"].astype(np.int64)
        # one row per id, ascending, the first gathered winning a repeat
        order = np.argsort(ids, kind="stable")
        first = np.ones(len(order), dtype=bool)
        first[1:] = ids[order][1:] != ids[order][:-1]
        images = order[first]
        image_ids = ids[images]
        det_rows = _rows(det_counts, images)
        gt_rows = _rows(gt_counts, images)

        det_ids = np.repeat(image_ids, det_counts[images])
        det_boxes, keep = rasterize(s["det_boxes"].reshape(-1, 4)[det_rows], self.input_size, self.variant, "det")
        det_ids, det_boxes = det_ids[keep], det_boxes[keep]
        det_scores = s["det_scores"][det_rows][keep].astype(np.float32)
        det_labels = s["det_labels"][det_rows][keep].astype(np.int64)
        gt_ids = np.repeat(image_ids, gt_counts[images])
        gt_boxes, keep = rasterize(s["gt_boxes"].reshape(-1, 4)[gt_rows], self.input_size, self.variant, "gt")
        gt_ids, gt_boxes = gt_ids[keep], gt_boxes[keep]
        gt_labels = s["gt_labels"][gt_rows][keep].astype(np.int64)

        classes = sorted(int(c) for c in np.unique(gt_labels))
        per_class, per_p, per_r, matches = {}, {}, {}, {}
        for c in classes:
            sel = gt_labels == c
            class_gt_ids = gt_ids[sel]  # ascending: GT rows are grouped by image in id order
            m = det_labels == c
            lo = np.searchsorted(class_gt_ids, det_ids[m], side="left")
            hi = np.searchsorted(class_gt_ids, det_ids[m], side="right")
            order, tp = _greedy_matches(det_boxes[m], det_scores[m].astype(np.float64), lo, hi - lo,
                                        gt_boxes[sel], self.iou_threshold)
            per_class[c], per_p[c], per_r[c] = _integrate(tp, int(sel.sum()))
            matches[c] = RankedMatches(
                image_index=np.searchsorted(image_ids, det_ids[m][order]), tp=tp,
                gt_counts=np.bincount(np.searchsorted(image_ids, class_gt_ids), minlength=len(image_ids)))
        first_class = classes[0] if classes else None
        return STAPResult(
            ap=float(np.mean(list(per_class.values()))) if per_class else 0.0,
            per_class=per_class,
            precision=per_p[first_class] if first_class is not None else np.zeros(0),
            recall=per_r[first_class] if first_class is not None else np.zeros(0),
            num_images=len(image_ids), num_gt=int(len(gt_labels)), num_detections=int(len(det_scores)),
            skipped_images=len(np.setdiff1d(s["skipped_ids"].astype(np.int64), image_ids)),
            variant=self.variant, input_size=self.input_size,
            iou_threshold=self.iou_threshold, per_class_precision=per_p, per_class_recall=per_r,
            mean_precision=float(np.mean([p.mean() if p.size else 0.0 for p in per_p.values()]))
            if per_p else 0.0,
            mean_recall=float(np.mean([r.mean() if r.size else 0.0 for r in per_r.values()]))
            if per_r else 0.0,
            image_ids=image_ids, matches=matches,
        )


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _cat(state) -> np.ndarray:
    """A state as one host array (a list before a sync, a tensor after it)."""
    if isinstance(state, list) and not state:
        return np.zeros(0)
    return dim_zero_cat(state).cpu().numpy()


def _rows(counts: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``images`` (in that order), each image holding ``counts[i]`` rows."""
    starts = np.cumsum(counts) - counts
    n = counts[images]
    return np.repeat(starts[images] - np.cumsum(n) + n, n) + np.arange(n.sum())
