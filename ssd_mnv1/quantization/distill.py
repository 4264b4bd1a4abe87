"""Distillation from the float model: the QAT student learns to reproduce the teacher's outputs.

With few training images, matching the float teacher (rather than only the ground truth) keeps
the int8 model close to the float one, which is what quantization should cost and no more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, student_offsets: torch.Tensor,
                      teacher_logits: torch.Tensor, teacher_offsets: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over classes on every anchor + smooth-L1 on offsets weighted by the
    teacher's foreground probability; normalized by the teacher's expected number of positives."""
    p_t = teacher_logits.softmax(-1)
    kl = (p_t * (p_t.clamp_min(1e-12).log() - student_logits.log_softmax(-1))).sum(-1)
    fg = 1.0 - p_t[..., 0]
    box = F.smooth_l1_loss(student_offsets, teacher_offsets, reduction="none", beta=1.0).sum(-1) * fg
    return (kl.sum() + box.sum()) / fg.sum().clamp_min(1.0)


#: ``QuantizationAwareTraining.distillation``: what the student is made to reproduce.
DISTILLATION_OBJECTIVES = ("kl", "detections")


def detection_distillation_loss(student_logits: torch.Tensor, student_offsets: torch.Tensor,
                                teacher_logits: torch.Tensor, teacher_offsets: torch.Tensor,
                                top_k: int = 200) -> torch.Tensor:
    """Distillation on what ST-AP sees: the anchors the metric ranks, not every anchor.

    :func:`distillation_loss` sums a KL term over every anchor, nearly all of them sure background,
    while ST-AP depends on the ranking of the confident detections only. Here each image's
    ``top_k`` anchors by the teacher's foreground probability, and the student's own ``top_k``
    (its false positives), are the only ones that count: per class, the Bernoulli KL between the
    teacher's and the student's class probability (the scores the metric thresholds and ranks),
    and the offsets' smooth-L1 weighted by the teacher's foreground probability; the mean over the
    selected anchors.
    """
    p_t = teacher_logits.softmax(-1)
    p_s = student_logits.softmax(-1)
    fg_t = 1.0 - p_t[..., 0]
    k = min(int(top_k), fg_t.shape[1])
    picked = torch.cat([fg_t.topk(k, dim=1).indices, (1.0 - p_s[..., 0]).detach().topk(k, dim=1).indices], dim=1)
    mask = torch.zeros_like(fg_t, dtype=torch.bool).scatter_(1, picked, True)
    eps = 1e-7
    t, s = p_t[..., 1:].clamp(eps, 1 - eps), p_s[..., 1:].clamp(eps, 1 - eps)
    kl = (t * (t.log() - s.log()) + (1 - t) * ((1 - t).log() - (1 - s).log())).sum(-1)
    box = F.smooth_l1_loss(student_offsets, teacher_offsets, reduction="none", beta=1.0).sum(-1) * fg_t
    return (kl[mask].sum() + box[mask].sum()) / mask.sum().clamp_min(1)
