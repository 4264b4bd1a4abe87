"""The convolution blocks every part of the detector is built from (backbone, neck, head).

Keras semantics: BN epsilon 1e-3 and momentum 0.99, ReLU6, and TF 'same' padding for stride 2.
QAT fills their quantization slots (:mod:`ssd_mnv1.quantization.qat`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

#: Keras' BatchNormalization epsilon (PyTorch's 1e-5 default would shift every activation).
BN_EPS = 1e-3
#: Keras momentum 0.99 is PyTorch momentum 0.01.
BN_MOMENTUM = 0.01


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


@torch.no_grad()
def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (eval mode) whose float :class:`ConvBN` layers have their BatchNorm folded
    into the conv (:meth:`ConvBN.folded_weight_and_bias`); fake-quantized layers, which fold
    their own, are left alone. The model itself when there is nothing to fold."""
    if not any(isinstance(m, ConvBN) and m.weight_quant is None for m in model.modules()):
        return model
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, ConvBN) and m.weight_quant is None:
            weight, bias = m.folded_weight_and_bias()
            c = m.conv
            conv = torch.nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                                   c.groups, bias=True, padding_mode=c.padding_mode, device=weight.device,
                                   dtype=weight.dtype)
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
            m.conv, m.bn = conv, torch.nn.Identity()
    return model
