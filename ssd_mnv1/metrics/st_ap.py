"""ST's own AP metric ("ST-AP"), in its two code versions (st_reference.md §6, §7).

* ``"st20"``: ST model zoo 2.0 (Padilla "Object-Detection-Metrics" evaluator), the pipeline most
  likely behind the published 2.0 numbers: decode without clipping, score > thr, greedy per-class
  NMS suppressing at continuous IoU >= 0.5, no detection cap, Padilla rasterization.
* ``"st25"``: the 2025 code (``objdet_metrics``): decode, clip to [0, 1], TF
  ``combined_non_max_suppression`` (suppress at IoU > 0.5, cap per class and in total), boxes
  rounded to pixels of the S x S input.

Both then match detections to ground truth VOC-style at IoU >= 0.4 with the +1-pixel IoU on integer
pixel boxes of the S x S model input, and integrate precision over recall at every point. Crowd
boxes are ordinary ground truth and images without ground truth are left out (ST's dataset
converter drops them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import nms

from ..box_coder import decode

VARIANTS = ("st20", "st25")
#: st25 NMS back-ends: ``torch`` (torchvision, equal scores visited in anchor order) or ``tf`` (TF's
#: own ``combined_non_max_suppression``, which ST's 2025 code calls). They differ only in the order
#: of equal scores, which int8 models (scores in steps of 1/256) have plenty of: that order changes
#: which of two tied overlapping boxes survives and which box is the 100th, ~0.05 ST-AP point.
NMS_BACKENDS = ("torch", "tf")

# torchvision's NMS suppresses when IoU > threshold. ST 2.0 suppresses when IoU >= 0.5. In float64
# "iou > nextafter(0.5, 0)" is exactly "iou >= 0.5", because no double lies strictly between the two
# (torchvision compares its scalar_t IoU against the threshold as a double, and st20 runs NMS on
# float64 boxes, so the IoU is a double too). This keeps torchvision's C++ loop (fast) with ST's rule.


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown ST-AP variant {variant!r}; allowed values: {', '.join(VARIANTS)}")
    return variant


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    arr = np.asarray(x)
    # read-only arrays (TF/TFLite outputs, broadcast views) would make torch warn; copy those only
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


# --------------------------------------------------------------------------------------------------
# Post-processing (decode + NMS) as each ST version does it
# --------------------------------------------------------------------------------------------------


def _nms_in_order(boxes: torch.Tensor, scores: torch.Tensor, threshold: float,
                  cap: int | None = None) -> torch.Tensor:
    """Greedy NMS visiting boxes by descending score, ties in index order (stable); returns the kept
    indices in that order, at most ``cap`` of them.

    torchvision sorts internally with an unstable sort, so it gets ranks instead of scores. With a
    cap, NMS runs on growing score-ordered prefixes: whether a box is kept depends only on the boxes
    ranked above it, so the kept boxes of a prefix are exactly the first kept boxes of the whole set
    and the loop can stop once ``cap`` are found (an untrained model scores every anchor above the
    threshold; this keeps st25 fast there).
    """
    n = scores.numel()
    order = torch.from_numpy(np.argsort(-scores.numpy(), kind="stable"))
    ranks = -torch.arange(n, dtype=boxes.dtype)
    sorted_boxes = boxes[order]
    k = n if cap is None else min(n, max(4 * cap, 256))
    while True:
        keep = nms(sorted_boxes[:k], ranks[:k], threshold)
        if k == n or keep.numel() >= cap:
            break
        k = min(n, 4 * k)
    if cap is not None:
        keep = keep[:cap]
    return order[keep]


def _tf_combined_nms(boxes: torch.Tensor, scores: np.ndarray, score_threshold: float, iou_threshold: float,
                     cap: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """ST 2025's ``tf.image.combined_non_max_suppression`` call on clipped boxes, person columns."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError:
        raise ValueError("--st25-nms tf (TF's combined NMS) needs tensorflow; install the export extra "
                         "(pip install -e '.[export]') or use --st25-nms torch") from None
    b = boxes.numpy()
    if b.shape[0] != scores.shape[0]:
        b = np.broadcast_to(b, (scores.shape[0],) + b.shape[1:])
    nb, ns, nc, nv = tf.image.combined_non_max_suppression(
        np.ascontiguousarray(b[:, :, None, :]), np.ascontiguousarray(scores[:, :, 1:]), cap, cap,
        iou_threshold=iou_threshold, score_threshold=score_threshold, pad_per_class=False, clip_boxes=False)
    nb, ns, nc, nv = nb.numpy(), ns.numpy(), nc.numpy(), nv.numpy()
    return [(nb[i, :n].astype(np.float32), ns[i, :n].astype(np.float32), nc[i, :n].astype(np.int64) + 1)
            for i, n in enumerate(nv)]


def st_detections(scores, offsets, anchors, variant: str = "st20", score_threshold: float = 0.001,
                  iou_threshold: float = 0.5, max_detections: int | None = None, nms: str = "torch",
                  ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """ST's post-processing of the model outputs, per variant (st_reference.md §6).

    ``scores`` (N, NA, C) softmax with the background in column 0, ``offsets`` (N, NA, 4) and
    ``anchors`` (N, NA, 4) or (NA, 4); unbatched (NA, C) inputs are accepted too. torch or numpy.

    Returns one ``(boxes_norm (D, 4) float32, scores (D,) float32, labels (D,) int64)`` per image,
    labels 1-based (the score column), sorted by descending score (ties: class, then anchor order).

    * st20: no clipping, keep score > thr, per-class greedy NMS suppressing IoU >= ``iou_threshold``
      (continuous IoU, computed in float64), no cap unless ``max_detections`` is given (then a total
      cap on the NMS output).
    * st25: clip to [0, 1], keep score > thr, per-class NMS suppressing IoU > ``iou_threshold``
      (TF ``combined_non_max_suppression``, float32; corners are ordered for the IoU as TF does),
      at most ``max_detections`` (default 100) per class and in total. ``nms="tf"`` runs TF's own
      op instead of torchvision (see :data:`NMS_BACKENDS`; st25 only).
    """
    _check_variant(variant)
    if nms not in NMS_BACKENDS:
        raise ValueError(f"unknown NMS back-end {nms!r}; allowed values: {', '.join(NMS_BACKENDS)}")
    if nms == "tf" and variant != "st25":
        raise ValueError("the 'tf' NMS back-end is ST 2025's combined NMS: use it with variant 'st25'")
    scores_t, offsets_t, anchors_t = _as_tensor(scores), _as_tensor(offsets), _as_tensor(anchors)
    if scores_t.dim() == 2:
        scores_t, offsets_t = scores_t[None], offsets_t[None]
    if anchors_t.dim() == 2:
        anchors_t = anchors_t[None]
    boxes_all = decode(offsets_t.float(), anchors_t.float())
    if variant == "st25":
        boxes_all = boxes_all.clamp(0.0, 1.0)
        cap = 100 if max_detections is None else int(max_detections)
        threshold = float(iou_threshold)
    else:
        cap = None if max_detections is None else int(max_detections)
        threshold = float(np.nextafter(float(iou_threshold), 0.0))
    scores_np = scores_t.float().numpy()
    if nms == "tf":
        return _tf_combined_nms(boxes_all, scores_np, float(score_threshold), threshold, cap)
    results = []
    for b in range(scores_np.shape[0]):
        boxes = boxes_all[b] if boxes_all.shape[0] > 1 else boxes_all[0]
        kept_boxes, kept_scores, kept_labels = [], [], []
        for c in range(1, scores_np.shape[2]):
            col = scores_np[b, :, c]
            idx = np.flatnonzero(col > score_threshold)
            if idx.size == 0:
                continue
            idx_t = torch.from_numpy(idx)
            cand = boxes[idx_t]
            cand_scores = torch.from_numpy(col[idx])
            if variant == "st25":
                nms_boxes = torch.cat([torch.minimum(cand[:, :2], cand[:, 2:]),
                                       torch.maximum(cand[:, :2], cand[:, 2:])], dim=1)
            else:
                nms_boxes = cand.double()
            keep = _nms_in_order(nms_boxes, cand_scores, threshold, cap)
            keep_np = keep.numpy()
            kept_boxes.append(cand.numpy()[keep_np])
            kept_scores.append(col[idx][keep_np])
            kept_labels.append(np.full(keep_np.size, c, dtype=np.int64))
        if kept_scores:
            det_boxes = np.concatenate(kept_boxes).astype(np.float32, copy=False)
            det_scores = np.concatenate(kept_scores).astype(np.float32, copy=False)
            det_labels = np.concatenate(kept_labels)
            if len(kept_scores) > 1:  # merge classes by score (stable: class order for ties)
                order = np.argsort(-det_scores, kind="stable")
                det_boxes, det_scores, det_labels = det_boxes[order], det_scores[order], det_labels[order]
            if cap is not None:
                det_boxes, det_scores, det_labels = det_boxes[:cap], det_scores[:cap], det_labels[:cap]
        else:
            det_boxes = np.zeros((0, 4), np.float32)
            det_scores = np.zeros((0,), np.float32)
            det_labels = np.zeros((0,), np.int64)
        results.append((det_boxes, det_scores, det_labels))
    return results


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
    d = np.asarray(det, dtype=np.float64).reshape(-1, 4)[:, None, :]
    g = np.asarray(gt, dtype=np.float64).reshape(-1, 4)[None, :, :]
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
    """ST's single-class AP (st_reference.md §7.1 step 5) on integer pixel boxes.

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
    npos = int(sum(len(np.asarray(g).reshape(-1, 4)) for g in gt_boxes_px_by_image.values()))
    if len(scores) == 0:
        return 0.0, np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    ids, boxes = ids[order], boxes[order]

    # The best GT of a detection does not depend on what is already matched (VOC-style greedy), so
    # it is computed per image up front; only "first detection to claim a GT" is sequential.
    best_iou = np.full(len(ids), -1.0)
    best_gt = np.full(len(ids), -1, dtype=np.int64)  # global GT index
    offset = 0
    uniq, inverse = np.unique(ids, return_inverse=True)
    groups = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[groups], np.arange(len(uniq) + 1))
    gt_offsets = {}
    for key, g in gt_boxes_px_by_image.items():
        gt_offsets[key] = offset
        offset += len(np.asarray(g).reshape(-1, 4))
    for u, image_id in enumerate(uniq.tolist()):
        gt = gt_boxes_px_by_image.get(image_id)
        if gt is None or len(gt) == 0:
            continue
        sel = groups[bounds[u]:bounds[u + 1]]
        iou = iou_plus_one(boxes[sel], gt)
        best = np.argmax(iou, axis=1)
        best_iou[sel] = iou[np.arange(len(sel)), best]
        best_gt[sel] = gt_offsets[image_id] + best

    hit = np.flatnonzero(best_iou >= iou_threshold)
    _, first = np.unique(best_gt[hit], return_index=True)
    tp = np.zeros(len(ids))
    tp[hit[first]] = 1.0
    acc_tp = np.cumsum(tp)
    acc_fp = np.cumsum(1.0 - tp)
    precision = acc_tp / (acc_tp + acc_fp)
    if npos == 0:
        return 0.0, precision, np.zeros(len(ids))
    recall = acc_tp / npos
    return _all_point_ap(precision, recall), precision, recall


# --------------------------------------------------------------------------------------------------
# Evaluator
# --------------------------------------------------------------------------------------------------


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

    def to_dict(self) -> dict:
        """Scalars only (JSON-friendly)."""
        return {"ap": self.ap, "per_class": {int(k): v for k, v in self.per_class.items()},
                "mean_precision": self.mean_precision, "mean_recall": self.mean_recall,
                "num_images": self.num_images, "num_gt": self.num_gt,
                "num_detections": self.num_detections, "skipped_images": self.skipped_images,
                "variant": self.variant, "input_size": self.input_size,
                "iou_threshold": self.iou_threshold}


class STAPEvaluator:
    """Accumulates detections and GT per image and computes ST-AP.

    Feed normalized boxes (x1, y1, x2, y2 in [0, 1] of the image; the resize to S x S is a pure
    stretch) with :meth:`add`; they are rasterized at once to pixels of the S x S input with the
    variant's rule. Images without GT are left out (counted in ``skipped_images``). Detections are
    ranked over the whole dataset; score ties keep image insertion order, then the order given.

    Distributed use: every rank calls ``state()``; gather them (``all_gather_object``) and call
    ``merge(states)`` on an empty evaluator (``merge`` adds to what is already there), or use
    :meth:`from_states`. Image ids seen twice when merging (a DistributedSampler pads by repeating
    samples) are kept once, from the first state that has them.
    """

    _STATE_VERSION = 1

    def __init__(self, input_size: int, variant: str = "st20", iou_threshold: float = 0.4):
        self.variant = _check_variant(variant)
        self.input_size = int(input_size)
        if self.input_size <= 0:
            raise ValueError(f"input_size must be positive, got {input_size}")
        self.iou_threshold = float(iou_threshold)
        self.reset()

    def reset(self) -> None:
        self._image_ids: list[int] = []
        self._det_boxes: list[np.ndarray] = []
        self._det_scores: list[np.ndarray] = []
        self._det_labels: list[np.ndarray] = []
        self._gt_boxes: list[np.ndarray] = []
        self._gt_labels: list[np.ndarray] = []
        self._skipped: list[int] = []
        self._seen: set[int] = set()

    def __len__(self) -> int:
        return len(self._image_ids)

    def add(self, image_id, det_boxes_norm, det_scores, det_labels, gt_boxes_norm, gt_labels) -> None:
        """Add one image: detections (D, 4)/(D,)/(D,) and GT (K, 4)/(K,), labels 1-based."""
        image_id = int(image_id)
        if image_id in self._seen:
            raise ValueError(f"image {image_id} was already added to this evaluator")
        self._seen.add(image_id)
        gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
        gt_norm = np.asarray(gt_boxes_norm, dtype=np.float32).reshape(-1, 4)
        if len(gt_norm) != len(gt_labels):
            raise ValueError(f"image {image_id}: {len(gt_norm)} GT boxes but {len(gt_labels)} labels")
        if len(gt_labels) == 0:
            self._skipped.append(image_id)
            return
        scores = np.asarray(det_scores, dtype=np.float32).reshape(-1)
        labels = np.asarray(det_labels, dtype=np.int64).reshape(-1)
        det_norm = np.asarray(det_boxes_norm).reshape(-1, 4)
        if not (len(det_norm) == len(scores) == len(labels)):
            raise ValueError(f"image {image_id}: {len(det_norm)} boxes, {len(scores)} scores and "
                             f"{len(labels)} labels")
        det_px, keep = rasterize(det_norm, self.input_size, self.variant, "det")
        gt_px, gt_keep = rasterize(gt_norm, self.input_size, self.variant, "gt")
        self._image_ids.append(image_id)
        self._det_boxes.append(det_px[keep])
        self._det_scores.append(scores[keep])
        self._det_labels.append(labels[keep])
        self._gt_boxes.append(gt_px[gt_keep])
        self._gt_labels.append(gt_labels[gt_keep])

    # -- distributed ------------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything accumulated, as plain python/numpy objects (picklable)."""
        return {"version": self._STATE_VERSION, "variant": self.variant,
                "input_size": self.input_size, "iou_threshold": self.iou_threshold,
                "image_ids": list(self._image_ids),
                "det_boxes": list(self._det_boxes), "det_scores": list(self._det_scores),
                "det_labels": list(self._det_labels), "gt_boxes": list(self._gt_boxes),
                "gt_labels": list(self._gt_labels), "skipped_ids": list(self._skipped)}

    def merge(self, states: list[dict]) -> "STAPEvaluator":
        """Append the images of ``states`` (in order); ids already present are skipped. Returns self."""
        for st in states:
            for key in ("variant", "input_size", "iou_threshold"):
                if st[key] != getattr(self, key):
                    raise ValueError(f"cannot merge a state with {key}={st[key]!r} into an evaluator "
                                     f"with {key}={getattr(self, key)!r}")
            for i, image_id in enumerate(st["image_ids"]):
                if image_id in self._seen:
                    continue
                self._seen.add(image_id)
                self._image_ids.append(int(image_id))
                for name in ("det_boxes", "det_scores", "det_labels", "gt_boxes", "gt_labels"):
                    getattr(self, f"_{name}").append(np.asarray(st[name][i]))
            for image_id in st["skipped_ids"]:
                if image_id not in self._seen:
                    self._seen.add(image_id)
                    self._skipped.append(int(image_id))
        return self

    @classmethod
    def from_states(cls, states: list[dict], order_by_id: bool = False) -> "STAPEvaluator":
        """An evaluator holding every image of ``states``.

        ``order_by_id``: images in ascending id order instead of state order. When the ids are
        dataset indices (as in training's validation), that is the order one process would have
        added them in, so score ties break the same way and the AP equals the single-process one.
        """
        if not states:
            raise ValueError("from_states needs at least one state")
        first = states[0]
        if order_by_id:
            where: dict[int, tuple[int, int]] = {}
            for s, st in enumerate(states):
                for i, image_id in enumerate(st["image_ids"]):
                    where.setdefault(int(image_id), (s, i))
            ids = sorted(where)
            merged = {k: first[k] for k in ("version", "variant", "input_size", "iou_threshold")}
            merged["image_ids"] = ids
            for key in ("det_boxes", "det_scores", "det_labels", "gt_boxes", "gt_labels"):
                merged[key] = [states[where[i][0]][key][where[i][1]] for i in ids]
            merged["skipped_ids"] = sorted({int(i) for st in states for i in st["skipped_ids"]} - set(ids))
            states = [merged]
        return cls(first["input_size"], first["variant"], first["iou_threshold"]).merge(states)

    # -- result -----------------------------------------------------------------------------------

    def compute(self) -> STAPResult:
        n = len(self._image_ids)
        counts = [len(s) for s in self._det_scores]
        if n:
            det_ids = np.repeat(np.asarray(self._image_ids, dtype=np.int64), counts)
            det_boxes = np.concatenate(self._det_boxes).reshape(-1, 4)
            det_scores = np.concatenate(self._det_scores)
            det_labels = np.concatenate(self._det_labels)
            gt_labels_all = np.concatenate(self._gt_labels)
        else:
            det_ids = np.zeros(0, np.int64)
            det_boxes = np.zeros((0, 4), np.int64)
            det_scores = np.zeros(0, np.float32)
            det_labels = np.zeros(0, np.int64)
            gt_labels_all = np.zeros(0, np.int64)
        classes = sorted(int(c) for c in np.unique(gt_labels_all))
        per_class, per_p, per_r = {}, {}, {}
        for c in classes:
            gt_by_image = {}
            for image_id, boxes, labels in zip(self._image_ids, self._gt_boxes, self._gt_labels):
                sel = labels == c
                if sel.any():
                    gt_by_image[image_id] = boxes[sel]
            m = det_labels == c
            ap, p, r = average_precision(det_ids[m], det_boxes[m], det_scores[m], gt_by_image,
                                         self.iou_threshold)
            per_class[c], per_p[c], per_r[c] = ap, p, r
        first = classes[0] if classes else None
        return STAPResult(
            ap=float(np.mean(list(per_class.values()))) if per_class else 0.0,
            per_class=per_class,
            precision=per_p[first] if first is not None else np.zeros(0),
            recall=per_r[first] if first is not None else np.zeros(0),
            num_images=n, num_gt=int(len(gt_labels_all)), num_detections=int(len(det_scores)),
            skipped_images=len(self._skipped), variant=self.variant, input_size=self.input_size,
            iou_threshold=self.iou_threshold, per_class_precision=per_p, per_class_recall=per_r,
            mean_precision=float(np.mean([p.mean() if p.size else 0.0 for p in per_p.values()]))
            if per_p else 0.0,
            mean_recall=float(np.mean([r.mean() if r.size else 0.0 for r in per_r.values()]))
            if per_r else 0.0,
        )
