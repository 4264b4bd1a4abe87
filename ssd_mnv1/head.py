"""SSD head: per pyramid level, a classification and a box conv, each followed by BN (no activation).

Outputs are flattened in Keras NHWC order, so anchor ``level_offset + (y*W + x)*A + a`` reads channel
``a*C + c`` - the same anchor order as ST's .h5 and TFLite files.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBN
from .specs import ANCHORS_PER_LOCATION, FPN_CHANNELS, ResolutionSpec


def flatten_nhwc(x: torch.Tensor, values_per_anchor: int) -> torch.Tensor:
    """(N, A*C, H, W) -> (N, H*W*A, C)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, values_per_anchor)


class SSDHead(nn.Module):
    """Separate (not shared) cls/box convs per level; 3x3 except where the spec says otherwise."""

    def __init__(self, spec: ResolutionSpec, num_classes: int):
        super().__init__()
        self.num_outputs = 1 + num_classes
        kernels = [3] * (spec.num_levels - 1) + [spec.top_head_kernel]
        a = ANCHORS_PER_LOCATION
        self.cls = nn.ModuleList(
            ConvBN(FPN_CHANNELS, a * self.num_outputs, k, bias=True, relu6=False) for k in kernels
        )
        self.box = nn.ModuleList(
            ConvBN(FPN_CHANNELS, a * 4, k, bias=True, relu6=False) for k in kernels
        )
        # Quantization slots (see ConvBN): TFLite gives a concatenation's inputs its own scale, so
        # the per-level convs output int8 directly at these shared ranges.
        self.cls_quant: nn.Module = nn.Identity()
        self.box_quant: nn.Module = nn.Identity()

    def forward(self, pyramid: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = [flatten_nhwc(m(p), self.num_outputs) for m, p in zip(self.cls, pyramid)]
        offsets = [flatten_nhwc(m(p), 4) for m, p in zip(self.box, pyramid)]
        return self.cls_quant(torch.cat(logits, dim=1)), self.box_quant(torch.cat(offsets, dim=1))
