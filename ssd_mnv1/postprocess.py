"""Post-processing outside the network, as ST does: decode, score threshold, per-class NMS, top-k.

One function, three recipes (:data:`VARIANTS`): what the firmware keeps (``deploy``) and what each
version of ST's AP evaluator scores (``st20``, ``st25``; docs/st_model.md §6). Published ST-AP
figures depend on every detail of the latter, down to the order of equal scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torchvision import ops

from .box_coder import decode


@dataclass
class Detections:
    """Detections of one image. ``boxes`` are normalized xyxy; ``labels`` are 1-based class ids."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())

    def to_pixels(self, width: int, height: int) -> torch.Tensor:
        """Boxes in pixels of an image of ``width x height`` (the resize is a pure stretch)."""
        scale = self.boxes.new_tensor([width, height, width, height])
        return self.boxes * scale

    def numpy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(boxes (D, 4), scores (D,), labels (D,))`` on the host, for the metrics."""
        return tuple(t.detach().cpu().numpy().reshape(shape)
                     for t, shape in ((self.boxes, (-1, 4)), (self.scores, (-1,)), (self.labels, (-1,))))


@dataclass(frozen=True)
class Variant:
    """The defaults and NMS rule of one post-processing recipe."""

    score_threshold: float  # a class keeps the anchors scoring strictly above it
    iou_threshold: float
    max_detections: int | None  # per class and in total; None: no cap
    clip: bool  # clip decoded boxes to [0, 1] before NMS
    suppress_at_threshold: bool  # ST 2.0's Python-float NMS suppresses IoU >= threshold, not only above
    tf_corners: bool  # TF orders each box's corners before its IoU (decoded corners can cross)
    stable_ties: bool  # ST-AP ranks equal scores as they come: class, then anchor order (CPU); else torchvision's


VARIANTS: dict[str, Variant] = {
    # The firmware's: confident boxes only; per-class torchvision NMS, on the tensors' device (= ssd_mnv1/c).
    "deploy": Variant(0.5, 0.5, 100, clip=True, suppress_at_threshold=False, tf_corners=False, stable_ties=False),
    # ST 2.0 (Padilla evaluator): greedy NMS in Python floats on unclipped boxes, nothing capped.
    "st20": Variant(0.001, 0.5, None, clip=False, suppress_at_threshold=True, tf_corners=False, stable_ties=True),
    # ST 2025 (objdet_metrics): clip, then TF's combined_non_max_suppression, 100 per class and in total.
    "st25": Variant(0.001, 0.5, 100, clip=True, suppress_at_threshold=False, tf_corners=True, stable_ties=True),
}

#: NMS back-ends: ``torch`` (torchvision) or ``tf`` (TF's own ``combined_non_max_suppression``, which
#: ST's 2025 code calls; st25 only). They differ only in the order of equal scores, which int8 models
#: (scores in steps of 1/256) have plenty of: that order changes which of two tied overlapping boxes
#: survives and which box is the 100th, ~0.05 ST-AP point.
NMS_BACKENDS = ("torch", "tf")


def postprocess(scores, offsets, anchors, *, variant: str = "deploy", score_threshold: float | None = None,
                iou_threshold: float | None = None, max_detections: int | None = None,
                nms: str = "torch") -> list[Detections]:
    """Turn the model's ``(scores, offsets, anchors)`` into per-image detections.

    ``scores`` (N, NA, C) softmax with the background in column 0, ``offsets`` (N, NA, 4),
    ``anchors`` (N, NA, 4) or (NA, 4); unbatched (NA, C) inputs are accepted too; torch or numpy.
    ``score_threshold``, ``iou_threshold`` and ``max_detections``: None takes the variant's value.

    Each result is sorted by descending score. With ``stable_ties`` (st20, st25), equal scores come
    in class, then anchor order, which is the order ST-AP breaks their ties in.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown post-processing variant {variant!r}; allowed values: {', '.join(VARIANTS)}")
    if nms not in NMS_BACKENDS:
        raise ValueError(f"unknown NMS back-end {nms!r}; allowed values: {', '.join(NMS_BACKENDS)}")
    if nms == "tf" and variant != "st25":
        raise ValueError("the 'tf' NMS back-end is ST 2025's combined NMS: use it with variant 'st25'")
    spec = VARIANTS[variant]
    score_threshold = spec.score_threshold if score_threshold is None else float(score_threshold)
    iou_threshold = spec.iou_threshold if iou_threshold is None else float(iou_threshold)
    cap = spec.max_detections if max_detections is None else int(max_detections)

    scores, offsets, anchors = _as_tensor(scores), _as_tensor(offsets), _as_tensor(anchors)
    if spec.stable_ties:
        scores, offsets, anchors = scores.cpu(), offsets.cpu(), anchors.cpu()
    if scores.dim() == 2:
        scores, offsets = scores[None], offsets[None]
    boxes_all = decode(offsets.float(), anchors.float())  # (N, NA, 4): anchors broadcast
    if spec.clip:
        boxes_all = boxes_all.clamp(0.0, 1.0)
    if nms == "tf":
        return _tf_combined_nms(boxes_all, scores.float().numpy(), score_threshold, iou_threshold, cap)
    if not spec.stable_ties:
        return [_torchvision_nms(boxes, probs, score_threshold, iou_threshold, cap)
                for boxes, probs in zip(boxes_all, scores.float())]
    if spec.suppress_at_threshold:
        # torchvision suppresses when IoU > threshold. In float64, "iou > nextafter(t, 0)" is exactly
        # "iou >= t": no double lies between the two (torchvision compares its scalar_t IoU against the
        # threshold as a double, and the boxes are float64, so the IoU is a double too).
        iou_threshold = float(np.nextafter(iou_threshold, 0.0))
    return _st_nms(boxes_all, scores.float().numpy(), spec, score_threshold, iou_threshold, cap)


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    arr = np.asarray(x)
    # read-only arrays (TF/TFLite outputs, broadcast views) make torch warn, reversed views fail: copy those
    return torch.from_numpy(arr if arr.flags.writeable and arr.flags.c_contiguous else arr.copy())


def _torchvision_nms(boxes: torch.Tensor, probs: torch.Tensor, score_threshold: float, iou_threshold: float,
                     cap: int | None) -> Detections:
    """The deploy recipe, which the C post-processor (``ssd_mnv1/c``) computes detection for detection:
    candidates in (anchor, class) order; each class's NMS on its own boxes (torchvision's CPU NMS
    visits equal scores in index order); the kept boxes merged by score, ties in candidate order."""
    cls_probs = probs[:, 1:]
    idx, cls = torch.nonzero(cls_probs > score_threshold, as_tuple=True)
    det_boxes, det_scores = boxes[idx], cls_probs[idx, cls]
    # per class on the boxes themselves: batched_nms shifts each class's coordinates (its
    # coordinate trick), which rounds them, and merges with an unstable sort above 1,000 boxes
    kept = [rows[ops.nms(det_boxes[rows], det_scores[rows], iou_threshold)]
            for rows in (torch.nonzero(cls == c).flatten() for c in torch.unique(cls).tolist())]
    keep = torch.cat(kept).sort().values if kept else idx.new_zeros(0)
    keep = keep[torch.sort(det_scores[keep], descending=True, stable=True).indices]
    if cap is not None:
        keep = keep[:cap]
    return Detections(det_boxes[keep], det_scores[keep], cls[keep] + 1)


def _st_nms(boxes: torch.Tensor, probs: np.ndarray, spec: Variant, score_threshold: float, iou_threshold: float,
            cap: int | None) -> list[Detections]:
    """ST's per-class greedy NMS of each image of a batch (CPU); classes merged by score, ties in
    class order.

    The threshold, the candidates' gather and their NMS box form are one op each for the whole
    batch; only the NMS itself runs per (image, class) group (batching it across images would need
    torchvision's coordinate-offset trick, whose shifted coordinates round differently).
    """
    num_images, _, num_cols = probs.shape
    # candidates in (image, class, anchor) order: the groups come out contiguous, anchors ascending
    img, cls, anchor = np.nonzero(probs[:, :, 1:].transpose(0, 2, 1) > score_threshold)
    cand_scores = probs[img, anchor, cls + 1]
    cand_boxes = boxes[torch.from_numpy(img), torch.from_numpy(anchor)]
    if spec.suppress_at_threshold:
        nms_boxes = cand_boxes.double()
    elif spec.tf_corners:
        nms_boxes = torch.cat([torch.minimum(cand_boxes[:, :2], cand_boxes[:, 2:]),
                               torch.maximum(cand_boxes[:, :2], cand_boxes[:, 2:])], dim=1)
    else:
        nms_boxes = cand_boxes
    cand_boxes = cand_boxes.numpy()
    bounds = np.searchsorted(img * (num_cols - 1) + cls, np.arange(num_images * (num_cols - 1) + 1))
    results = []
    for i in range(num_images):
        kept = []  # candidate rows kept, class by class
        for g in range(i * (num_cols - 1), (i + 1) * (num_cols - 1)):
            lo, hi = bounds[g], bounds[g + 1]
            if hi > lo:
                kept.append(lo + _nms_in_order(nms_boxes[lo:hi], torch.from_numpy(cand_scores[lo:hi]),
                                               iou_threshold, cap).numpy())
        rows = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
        if len(kept) > 1:  # merge classes by score (stable: class order for ties)
            rows = rows[np.argsort(-cand_scores[rows], kind="stable")]
        if cap is not None:
            rows = rows[:cap]
        results.append(Detections(torch.from_numpy(cand_boxes[rows].reshape(-1, 4)),
                                  torch.from_numpy(cand_scores[rows]), torch.from_numpy(cls[rows] + 1)))
    return results


def _nms_in_order(boxes: torch.Tensor, scores: torch.Tensor, threshold: float,
                  cap: int | None = None) -> torch.Tensor:
    """Greedy NMS visiting boxes by descending score, ties in index order (stable); returns the kept
    indices in that order, at most ``cap`` of them.

    torchvision sorts internally with an unstable sort, so it gets ranks instead of scores.

    With a cap, NMS walks the score order in chunks and stops once ``cap`` boxes are kept (an
    untrained model scores every anchor above the threshold; a float model passes ~1,400 of 6,825
    anchors at ST's 0.001). Each chunk runs with the boxes kept so far in front of it, which gives
    what one NMS over everything gives: a box is suppressed only by a *kept* box ranked above it
    (suppressed ones suppress nothing), and the boxes kept so far are all the kept boxes above the
    chunk; none of them suppresses another (the lower one would not have been kept), so they all stay
    kept; each pair is compared as torchvision compares it in one run, higher-ranked box first.
    """
    n = scores.numel()
    order = torch.from_numpy(np.argsort(-scores.numpy(), kind="stable"))
    ranks = -torch.arange(n, dtype=boxes.dtype)
    sorted_boxes = boxes[order]
    step = 3 * max(cap or 0, 64)  # first chunk: a float model keeps ~1 in 4 candidates at the top
    if cap is None or n <= step:
        keep = ops.nms(sorted_boxes, ranks, threshold)
        return order[keep if cap is None else keep[:cap]]
    kept = torch.zeros(0, dtype=torch.int64)  # positions in score order, ascending
    start = 0
    while start < n and kept.numel() < cap:
        stop = min(n, start + step)
        rows = torch.cat([kept, torch.arange(start, stop)])
        kept = rows[ops.nms(sorted_boxes[rows], ranks[rows], threshold)]
        # next chunk: what the kept fraction so far says is missing (a short chunk costs one more
        # small NMS; a long one compares every kept box with all of it)
        rate = max(kept.numel() / stop, 1 / 64)
        step = max(64, int((cap - kept.numel()) / rate))
        start = stop
    return order[kept[:cap]]


def _tf_combined_nms(boxes: torch.Tensor, scores: np.ndarray, score_threshold: float, iou_threshold: float,
                     cap: int) -> list[Detections]:
    """ST 2025's ``tf.image.combined_non_max_suppression`` call on clipped boxes, class columns."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError:
        raise ValueError("the 'tf' NMS back-end (TF's combined NMS) needs tensorflow; install the export "
                         "extra (pip install -e '.[export]') or use the 'torch' back-end") from None
    nb, ns, nc, nv = tf.image.combined_non_max_suppression(
        np.ascontiguousarray(boxes.numpy()[:, :, None, :]), np.ascontiguousarray(scores[:, :, 1:]), cap, cap,
        iou_threshold=iou_threshold, score_threshold=score_threshold, pad_per_class=False, clip_boxes=False)
    nb, ns, nc, nv = nb.numpy(), ns.numpy(), nc.numpy(), nv.numpy()
    return [Detections(torch.from_numpy(nb[i, :n].astype(np.float32)), torch.from_numpy(ns[i, :n].astype(np.float32)),
                       torch.from_numpy(nc[i, :n].astype(np.int64) + 1)) for i, n in enumerate(nv)]
