"""ST's box coder: corner offsets normalized by the anchor size (docs/st_model.md §3.3-3.4).

No variances, no log-space, no centre/size parametrization: each corner moves by a fraction of
the anchor's width or height.
"""

from __future__ import annotations

import torch


def _anchor_wh(anchors: torch.Tensor) -> torch.Tensor:
    wh = anchors[..., 2:] - anchors[..., :2]
    return torch.cat([wh, wh], dim=-1)


def encode(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Offsets ``t`` such that ``decode(t, anchors) == boxes``; both inputs normalized xyxy."""
    return (boxes - anchors) / _anchor_wh(anchors)


def decode(offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes (normalized xyxy, unclipped) from offsets; broadcasts over leading dims."""
    return anchors + offsets * _anchor_wh(anchors)
