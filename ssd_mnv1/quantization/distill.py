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
