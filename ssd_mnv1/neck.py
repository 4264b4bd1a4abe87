"""ST's extra layers and FPN-lite neck (docs/st_model.md §2.2-2.3).

Laterals are 1x1 conv + BN with no activation; the top level is a 1x1 conv + BN on the global
average of the last extra block; the top-down path adds bilinear x2 upsamplings (Keras
``UpSampling2D(2, 'bilinear')`` is exactly ``F.interpolate(scale_factor=2, align_corners=False)``)
with no smoothing conv and no activation after the adds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBN, DepthwiseSeparable
from .specs import FPN_CHANNELS, ResolutionSpec


class ExtraLayers(nn.Module):
    """Depthwise-separable blocks after C13 with biases, strides 2, 1, 2, 1, ...

    Returns the output of every second block (stride-1 ones), which feed the pyramid.
    """

    def __init__(self, channels: int, num_blocks: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            DepthwiseSeparable(channels, channels, 2 if i % 2 == 0 else 1, bias=True)
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i % 2 == 1:
                taps.append(x)
        return taps


class FPNLite(nn.Module):
    """Laterals on (C5, C11, C13, extras...), a GAP top level, and a top-down sum; finest first."""

    def __init__(self, in_channels: tuple[int, ...], spec: ResolutionSpec):
        super().__init__()
        self.spec = spec
        self.extras = ExtraLayers(in_channels[-1], spec.num_extras)
        tap_channels = list(in_channels) + [in_channels[-1]] * (spec.num_extras // 2)
        self.lateral = nn.ModuleList(
            ConvBN(c, FPN_CHANNELS, 1, bias=True, relu6=False) for c in tap_channels
        )
        self.top = ConvBN(in_channels[-1], FPN_CHANNELS, 1, bias=True, relu6=False)
        # Quantization slots (see ConvBN): the pooled top's input and each top-down sum.
        self.gap_quant: nn.Module = nn.Identity()
        self.add_quant = nn.ModuleList(nn.Identity() for _ in self.lateral)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        # ST quirk (224 only): C5/C11/C13 are zero-padded to 32/16/8 so the pyramid matches 256's;
        # the padded C13 also feeds the extra layers.
        taps = [F.pad(f, p) if any(p) else f for f, p in zip(feats, self.spec.lateral_pads)]
        taps += self.extras(taps[-1])
        p = self.top(self.gap_quant(taps[-1].mean(dim=(2, 3), keepdim=True)))
        pyramid = [p]
        for i in reversed(range(len(self.lateral))):
            up = F.interpolate(p, scale_factor=2, mode="bilinear", align_corners=False)
            if i == len(self.lateral) - 1 and any(self.spec.top_up_pad):
                # ST quirk (192 only): the 2x2 upsampled top is padded top/left to the 3x3 level.
                up = F.pad(up, self.spec.top_up_pad)
            total = self.lateral[i](taps[i]) + up
            if hasattr(self.lateral[i].output_quant, "observe_also"):
                # TFLite quirk, measured in the converted files: a lateral conv's int8 output range
                # also covers the sum it feeds (the union of both float ranges).
                self.lateral[i].output_quant.observe_also(total)
            p = self.add_quant[i](total)
            pyramid.append(p)
        return pyramid[::-1]
