"""How far two models' detections agree, box for box (export parity beyond AP).

AP can stay put while individual boxes move; the exporter's promise is that the int8 file detects
what the model it came from detects. Two detection lists agree on a box when a one-to-one greedy
match (by descending score) pairs it with a box of the other list at IoU >= ``iou_threshold``.
Boxes of zero area (decoded entirely outside the image, then clipped) are left out: they overlap
nothing, not even themselves, and no user can act on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from ..postprocess import Detections


@dataclass
class Agreement:
    matched: int
    boxes_a: int
    boxes_b: int

    @property
    def fraction(self) -> float:
        """Matched pairs over the larger of the two box counts (1.0 when both are empty)."""
        total = max(self.boxes_a, self.boxes_b)
        return 1.0 if total == 0 else self.matched / total


def match_count(boxes_a, scores_a, boxes_b, iou_threshold: float = 0.5) -> int:
    """One-to-one greedy matches of ``a`` (visited by descending score) to ``b``."""
    a = torch.as_tensor(np.asarray(boxes_a, np.float32)).reshape(-1, 4)
    b = torch.as_tensor(np.asarray(boxes_b, np.float32)).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return 0
    iou = box_iou(a, b)
    taken = torch.zeros(len(b), dtype=torch.bool)
    matched = 0
    for i in np.argsort(-np.asarray(scores_a), kind="stable"):
        row = iou[int(i)].masked_fill(taken, -1.0)
        j = int(row.argmax())
        if row[j] >= iou_threshold:
            taken[j] = True
            matched += 1
    return matched


def detection_agreement(dets_a: Sequence[Detections], dets_b: Sequence[Detections],
                        iou_threshold: float = 0.5) -> Agreement:
    """Agreement over images; each list holds the detections of the same images, in the same order.

    Boxes are only paired within the same class.
    """
    if len(dets_a) != len(dets_b):
        raise ValueError(f"detection lists cover {len(dets_a)} and {len(dets_b)} images")
    matched = n_a = n_b = 0
    for det_a, det_b in zip(dets_a, dets_b):
        ba, sa, la = _with_area(*det_a.numpy())
        bb, sb, lb = _with_area(*det_b.numpy())
        for c in np.union1d(la, lb):
            ia, ib = la == c, lb == c
            matched += match_count(ba[ia], sa[ia], bb[ib], iou_threshold)
        n_a += len(la)
        n_b += len(lb)
    return Agreement(matched, n_a, n_b)


def _with_area(boxes, scores, labels):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], np.asarray(scores)[keep], np.asarray(labels)[keep]
