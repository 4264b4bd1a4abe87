"""MobileNetV1 backbone exactly as Keras-Applications builds it (stride-2 paddings, BN eps 1e-3, ReLU6).

Returns the three feature maps ST's detector taps: C5 (``conv_pw_5_relu``, stride 8), C11
(``conv_pw_11_relu``, stride 16) and C13 (``conv_pw_13_relu``, stride 32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .specs import check_alpha, scaled_channels

#: Keras' BatchNormalization epsilon (PyTorch's 1e-5 default would shift every activation).
BN_EPS = 1e-3
#: Keras momentum 0.99 is PyTorch momentum 0.01.
BN_MOMENTUM = 0.01

#: (pointwise filters at alpha=1, depthwise stride) of blocks 1..13.
MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)
#: 1-based indices of the blocks whose outputs feed the neck.
FEATURE_BLOCKS = (5, 11, 13)


class ConvBN(nn.Module):
    """Conv (optionally depthwise) + BN (+ ReLU6), with TF 'same' padding for stride 2.

    TF pads a stride-2 3x3 conv on an even input by one pixel at the bottom/right only; PyTorch's
    symmetric padding would shift the grid by one pixel, so stride-2 layers pad explicitly.

    Two quantization slots, empty in the float model and filled by
    :func:`ssd_mnv1.quantization.prepare_qat`: ``weight_quant`` (when set, BN is folded into the
    conv with its running statistics and the folded weights are fake-quantized, as TFLite runs the
    layer) and ``output_quant`` (the layer's int8 output, after the fused ReLU6).
    """

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, *,
                 depthwise: bool = False, bias: bool = False, relu6: bool = True):
        super().__init__()
        self.stride = stride
        pad = 0 if stride == 2 else kernel // 2
        self.conv = nn.Conv2d(cin, cout, kernel, stride, pad, groups=cin if depthwise else 1,
                              bias=bias)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if relu6 else nn.Identity()
        self.weight_quant: nn.Module | None = None
        self.output_quant: nn.Module = nn.Identity()

    def folded_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The conv's weight and bias with BN (running statistics) folded in."""
        bn = self.bn
        gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = self.conv.weight * gain.reshape(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * gain
        if self.conv.bias is not None:
            bias = bias + self.conv.bias * gain
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pad(x, (0, 1, 0, 1))
        if self.weight_quant is None:
            y = self.bn(self.conv(x))
        else:
            weight, bias = self.folded_weight_and_bias()
            c = self.conv
            y = F.conv2d(x, self.weight_quant(weight), bias, c.stride, c.padding, c.dilation, c.groups)
        return self.output_quant(self.act(y))

    def train(self, mode: bool = True) -> "ConvBN":
        super().train(mode)
        if self.weight_quant is not None:
            self.bn.eval()  # folded with frozen running statistics, as TFLite will run it
        return self


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 + BN + ReLU6, then pointwise 1x1 + BN + ReLU6."""

    def __init__(self, cin: int, cout: int, stride: int, *, bias: bool = False):
        super().__init__()
        self.dw = ConvBN(cin, cin, 3, stride, depthwise=True, bias=bias)
        self.pw = ConvBN(cin, cout, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


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
