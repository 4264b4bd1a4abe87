"""Anchor matching and target encoding as ST trains (docs/st_model.md §8.1; train_step README).

Bipartite greedy first, then IoU >= 0.5; everything else is background (no ignore band). IoU is the
continuous one (no +1) of torchvision's ``box_iou``, computed in float64 against ST's float64,
unclipped anchors (:func:`~ssd_mnv1.anchors.generate_anchors` with ``torch.float64``): exact ties are
frequent, and only float64 with first-index argmax reproduces ST's set of positive anchors.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

from ..box_coder import encode

#: ``st20``: ST 2.0's matching, except that a GT overlapping no remaining anchor gets no bipartite
#: anchor (ST 2.0 then hands anchor 0 to GT 0, dropping GT 0's real match: a bug). ``st25``: ST
#: 2025 skips such a GT too, so it is the same rule. ``st20_exact``: ST 2.0 bug included.
MATCH_VARIANTS = ("st20", "st25", "st20_exact")
BACKGROUND = -1


def match_anchors(gt_boxes: torch.Tensor, anchors: torch.Tensor, iou_threshold: float = 0.5,
                  variant: str = "st20") -> torch.Tensor:
    """Index of the GT each anchor is assigned to, ``-1`` for background; shape ``(A,)``.

    Step 1 (bipartite, greedy global), once per GT: each GT's best anchor (first index on ties),
    then the GT whose best is largest (first GT on ties) takes it; that GT's row and that
    anchor's column leave the pool. Step 2: each anchor not taken in step 1 whose best IoU is
    ``>= iou_threshold`` goes to its best GT (first GT on ties).
    """
    if variant not in MATCH_VARIANTS:
        raise ValueError(f"unknown match variant {variant!r}: choose one of {', '.join(MATCH_VARIANTS)}")
    num_gt = gt_boxes.shape[0]
    matched = torch.full((anchors.shape[0],), BACKGROUND, dtype=torch.long, device=anchors.device)
    if num_gt == 0:
        return matched
    iou = box_iou(gt_boxes.to(anchors.device, torch.float64), anchors.to(torch.float64))  # (K, A)
    pool = iou.clone()
    bipartite = torch.zeros(num_gt, dtype=torch.long, device=anchors.device)  # ST: np.zeros
    assigned = torch.zeros(num_gt, dtype=torch.bool, device=anchors.device)
    for _ in range(num_gt):
        best_anchor = pool.argmax(dim=1)
        best_iou = pool.gather(1, best_anchor[:, None])[:, 0]
        g = int(best_iou.argmax())
        if best_iou[g] <= 0 and variant != "st20_exact":
            break  # every GT left overlaps no free anchor
        a = best_anchor[g]
        bipartite[g] = a
        assigned[g] = True
        pool[g] = 0.0
        pool[:, a] = 0.0
    if variant == "st20_exact":
        assigned[:] = True  # GTs never reached keep ST's initial anchor 0
    # ST writes the bipartite pairs with one fancy assignment: for a repeated anchor the last GT wins.
    for g in assigned.nonzero()[:, 0].tolist():
        matched[bipartite[g]] = g
    taken = matched != BACKGROUND
    iou[:, taken] = 0.0
    best_iou, best_gt = iou.max(dim=0)
    free = ~taken & (best_iou >= iou_threshold)
    matched[free] = best_gt[free]
    return matched


def anchor_targets(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, anchors: torch.Tensor,
                   iou_threshold: float = 0.5, variant: str = "st20") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor class (0 = background, GT labels are 1-based) and box-coder targets ``(A, 4)``.

    Offsets are encoded in float64 (ST builds ``y_true`` in float64) and returned as float32;
    background anchors get 0.
    """
    matched = match_anchors(gt_boxes, anchors, iou_threshold, variant)
    positive = matched >= 0
    labels = torch.zeros(anchors.shape[0], dtype=torch.long, device=anchors.device)
    offsets = torch.zeros(anchors.shape[0], 4, dtype=torch.float32, device=anchors.device)
    if positive.any():
        labels[positive] = gt_labels.to(anchors.device)[matched[positive]].long()
        boxes = gt_boxes.to(anchors.device, torch.float64)[matched[positive]]
        offsets[positive] = encode(boxes, anchors[positive].to(torch.float64)).float()
    return labels, offsets


def batch_anchor_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor], anchors: torch.Tensor,
                         iou_threshold: float = 0.5, variant: str = "st20") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`anchor_targets` for a batch: ``(N, A)`` classes and ``(N, A, 4)`` offset targets."""
    pairs = [anchor_targets(b, l, anchors, iou_threshold, variant) for b, l in zip(boxes, labels)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
