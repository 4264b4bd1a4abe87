"""MobileNetV1 backbone exactly as Keras-Applications builds it (stride-2 paddings, BN eps 1e-3, ReLU6).

Returns the three feature maps ST's detector taps: C5 (``conv_pw_5_relu``, stride 8), C11
(``conv_pw_11_relu``, stride 16) and C13 (``conv_pw_13_relu``, stride 32).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBN, DepthwiseSeparable
from .specs import check_alpha, scaled_channels

#: (pointwise filters at alpha=1, depthwise stride) of blocks 1..13.
MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)
#: 1-based indices of the blocks whose outputs feed the neck.
FEATURE_BLOCKS = (5, 11, 13)


class MobileNetV1(nn.Module):
    """Keras MobileNetV1 (depth_multiplier 1) without top; ``forward`` returns (C5, C11, C13)."""

    def __init__(self, alpha: float = 0.25):
        super().__init__()
        self.alpha = check_alpha(alpha)
        cin = scaled_channels(32, alpha)
        self.conv1 = ConvBN(3, cin, 3, 2)
        blocks = []
        for filters, stride in MOBILENET_V1_BLOCKS:
            cout = scaled_channels(filters, alpha)
            blocks.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = tuple(self.blocks[i - 1].pw.conv.out_channels for i in FEATURE_BLOCKS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.conv1(x)
        feats = []
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i in FEATURE_BLOCKS:
                feats.append(x)
        return tuple(feats)
