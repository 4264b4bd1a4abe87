"""ST's SSD loss (docs/st_model.md §8.2), with hard-negative mining as an alternative.

ST computes the classification loss on the softmax *probabilities*, clipped to [1e-7, 1 - 1e-7],
so the loss takes probabilities too: the same function then scores training logits (after a
softmax) and the deployed model's outputs (validation, QAT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CLASSIFICATION_LOSSES = ("focal", "hard_negative_mining")
PROB_EPS = 1e-7


def target_probability(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Probability of each anchor's target class, clipped as ST does; ``(N, A)``."""
    p_t = probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return p_t.clamp(PROB_EPS, 1.0 - PROB_EPS)


def softmax_focal_loss(probs: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0,
                       gamma: float = 0.25) -> torch.Tensor:
    """``-alpha * (1 - p_t)**gamma * log(p_t)`` per anchor, ``(N, A)``.

    ST's values are alpha 1.0 and gamma 0.25: the argument names look swapped against RetinaNet's
    (0.25, 2) but these are the values its pretrained models were trained with.
    """
    p_t = target_probability(probs, labels)
    return -alpha * (1.0 - p_t) ** gamma * torch.log(p_t)


def hard_negative_mining_loss(probs: torch.Tensor, labels: torch.Tensor, neg_pos_ratio: float = 3.0
                              ) -> torch.Tensor:
    """Cross-entropy on positives plus the ``neg_pos_ratio`` x #positives hardest negatives per
    image (at least one negative, so images without GT still teach background); ``(N, A)``."""
    ce = -torch.log(target_probability(probs, labels))
    positive = labels > 0
    with torch.no_grad():
        neg_ce = ce.masked_fill(positive, -1.0)
        num_neg = (positive.sum(1, keepdim=True) * neg_pos_ratio).clamp(min=1).long()
        rank = neg_ce.argsort(dim=1, descending=True).argsort(dim=1)
        keep = positive | (rank < num_neg)
    return ce * keep


def l2_penalty(kernels: list[torch.Tensor], l2: float) -> torch.Tensor:
    """Keras' ``L2(l2)`` regularizer loss, ``l2 * sum(w**2)``, added to the loss as ST's Keras ``fit``
    does (so its gradient ``2*l2*w`` reaches Adam's moments, unlike decoupled weight decay)."""
    if not kernels:
        return torch.zeros(())
    return l2 * torch.stack([(w * w).sum() for w in kernels]).sum()


@dataclass
class LossOutput:
    total: torch.Tensor
    classification: torch.Tensor
    localization: torch.Tensor
    num_positives: int


def ssd_loss(probs: torch.Tensor, offsets: torch.Tensor, labels: torch.Tensor, target_offsets: torch.Tensor,
             *, classification: str = "focal", focal_alpha: float = 1.0,
             focal_gamma: float = 0.25, neg_pos_ratio: float = 3.0, box_weight: float = 1.0,
             smooth_l1_sigma: float = 0.5) -> LossOutput:
    """(sum of classification over anchors + box_weight * sum of smooth-L1 over positives) / N_pos.

    ``labels`` ``(N, A)`` per-anchor targets (0 = background) and ``target_offsets`` ``(N, A, 4)``
    the box-coder targets, both from :func:`~ssd_mnv1.training.matcher.batch_anchor_targets`. N_pos counts the positives of the whole batch, as ST's Keras loss ends up
    doing. Smooth-L1 with sigma 0.5 is 0.125 d^2 below |d| = 4 and |d| - 2 above (beta = 1/sigma^2).
    """
    if classification == "focal":
        cls = softmax_focal_loss(probs, labels, focal_alpha, focal_gamma)
    elif classification == "hard_negative_mining":
        cls = hard_negative_mining_loss(probs, labels, neg_pos_ratio)
    else:
        raise ValueError(f"unknown classification loss {classification!r}: choose one of "
                         f"{', '.join(CLASSIFICATION_LOSSES)}")
    positive = labels > 0
    num_pos = int(positive.sum())
    box = F.smooth_l1_loss(offsets[positive], target_offsets[positive].to(offsets.dtype), reduction="sum",
                           beta=1.0 / smooth_l1_sigma ** 2)
    norm = max(1, num_pos)
    cls_sum = cls.sum()
    return LossOutput((cls_sum + box_weight * box) / norm, cls_sum / norm, box / norm, num_pos)
