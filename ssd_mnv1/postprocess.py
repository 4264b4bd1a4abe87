"""Post-processing outside the network, as ST does: decode, score threshold, per-class NMS, top-k."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

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


def postprocess(
    scores: torch.Tensor,
    offsets: torch.Tensor,
    anchors: torch.Tensor,
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    max_detections: int | None = 100,
    clip: bool = True,
) -> list[Detections]:
    """Turn the model's ``(scores, offsets, anchors)`` (batched or not) into per-image detections.

    A class keeps anchors whose score is strictly above ``score_threshold`` (ST's rule); NMS is
    torchvision's, per class. ``clip`` clips decoded boxes to [0, 1] (ST-2025, the firmware).
    """
    if scores.dim() == 2:
        scores, offsets, anchors = scores[None], offsets[None], anchors[None]
    boxes_all = decode(offsets.float(), anchors.float())
    if clip:
        boxes_all = boxes_all.clamp(0.0, 1.0)
    results = []
    for boxes, probs in zip(boxes_all, scores.float()):
        cls_probs = probs[:, 1:]
        idx, cls = torch.nonzero(cls_probs > score_threshold, as_tuple=True)
        det_boxes, det_scores = boxes[idx], cls_probs[idx, cls]
        keep = batched_nms(det_boxes, det_scores, cls, iou_threshold)
        if max_detections is not None:
            keep = keep[:max_detections]
        results.append(Detections(det_boxes[keep], det_scores[keep], cls[keep] + 1))
    return results
