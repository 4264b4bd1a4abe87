"""Anchor matching as ST trains it (st_reference.md §8.1): bipartite first, then IoU >= 0.5.

IoU is the continuous one of torchvision (no +1) on normalized corners, against the *unclipped*
anchors. There is no ignore band: everything not matched is background.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

#: 2.0 (the pretrained files) assigns a GT with no overlapping anchor anyway; 2025 skips it.
MATCH_VARIANTS = ("st20", "st25")
BACKGROUND = -1


def match_anchors(gt_boxes: torch.Tensor, anchors: torch.Tensor, iou_threshold: float = 0.5,
                  variant: str = "st20") -> torch.Tensor:
    """Index of the GT each anchor is assigned to, ``-1`` for background; shape ``(A,)``.

    Step 1 (bipartite, greedy global): once per GT, the best remaining (GT, anchor) pair is
    assigned and both leave the pool, so every GT owns at least one anchor. Step 2: each anchor
    still free whose best IoU is ``>= iou_threshold`` goes to its best GT.
    """
    if variant not in MATCH_VARIANTS:
        raise ValueError(f"unknown match variant {variant!r}: choose one of {', '.join(MATCH_VARIANTS)}")
    num_anchors = anchors.shape[0]
    matched = torch.full((num_anchors,), BACKGROUND, dtype=torch.long, device=anchors.device)
    if gt_boxes.numel() == 0:
        return matched
    iou = box_iou(gt_boxes.float(), anchors.float())  # (K, A)
    pool = iou.clone()
    for _ in range(gt_boxes.shape[0]):
        flat = int(torch.argmax(pool))
        g, a = divmod(flat, num_anchors)
        best = float(pool[g, a])
        if best < 0:  # every GT already placed
            break
        if best == 0 and variant == "st25":
            pool[g] = -1.0
            continue
        matched[a] = g
        pool[g] = -1.0
        pool[:, a] = -1.0
    best_iou, best_gt = iou.max(dim=0)
    free = (matched == BACKGROUND) & (best_iou >= iou_threshold)
    matched[free] = best_gt[free]
    return matched


def anchor_targets(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, anchors: torch.Tensor,
                   iou_threshold: float = 0.5, variant: str = "st20") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor class (0 = background, GT labels are 1-based) and matched GT box ``(A, 4)``."""
    matched = match_anchors(gt_boxes, anchors, iou_threshold, variant)
    positive = matched >= 0
    labels = torch.zeros(anchors.shape[0], dtype=torch.long, device=anchors.device)
    boxes = torch.zeros_like(anchors)
    if positive.any():
        labels[positive] = gt_labels.to(anchors.device)[matched[positive]].long()
        boxes[positive] = gt_boxes.to(anchors)[matched[positive]]
    return labels, boxes


def batch_anchor_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor], anchors: torch.Tensor,
                         iou_threshold: float = 0.5, variant: str = "st20") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`anchor_targets` for a batch: ``(N, A)`` classes and ``(N, A, 4)`` matched boxes."""
    pairs = [anchor_targets(b.to(anchors), l, anchors, iou_threshold, variant) for b, l in zip(boxes, labels)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
