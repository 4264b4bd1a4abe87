"""Quantization-aware model that simulates TFLite's int8 arithmetic for ST's detector.

What TFLite does to this graph, and how it is simulated here (torch's fake-quantize ops, with
straight-through gradients):

* BatchNorm is folded into each conv (frozen running statistics), and the folded weights are
  quantized **per output channel, symmetric**, to [-127, 127].
* Activations are **per-tensor asymmetric int8** with observed (min/max) ranges. ReLU6 outputs are
  fused with their conv, so their range is observed within [0, 6]; on real images almost every
  layer reaches 6 (scale 6/255, zp -128, as in ST's file). Laterals, adds, the pooled top, the
  concatenated logits and offsets are unbounded. A pad and a bilinear x2 resize keep their
  input's quantization in TFLite, so no quantizer is placed after them; the heads' concatenation
  requantizes each level's own range to a shared one, so both are simulated.
* The input is uint8 with scale 1/127.5 and zero point 127 fed with raw pixels (the device's
  path): the network sees (p - 127)/127.5, half a step above p/127.5 - 1.
* The softmax output is fixed at scale 1/256, zp -128; outputs are dequantized to float.

:meth:`QATDetector.to_float` returns a plain :class:`SSDMobileNetV1` whose weights lie on the int8
grid and whose BN is the identity, so the TFLite converter re-derives the same weight scales.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import ConvBN
from ..head import flatten_nhwc
from ..model import SSDMobileNetV1

INPUT_SCALE = 1.0 / 127.5
INPUT_ZERO_POINT = 127
OBSERVERS = ("ema", "minmax")


class ActivationQuantizer(nn.Module):
    """Per-tensor asymmetric int8 fake quantization with a min/max observer (EMA or running).

    A ``fixed_range`` (the softmax output's) disables observation; ``bounds`` (ReLU6's [0, 6])
    caps an observed range and is the range used before any observation. Without either, the
    quantizer passes values through unchanged until it has observed something.
    """

    def __init__(self, fixed_range: tuple[float, float] | None = None, momentum: float = 0.01,
                 bounds: tuple[float, float] | None = None):
        super().__init__()
        self.momentum = momentum
        self.observer = "ema"
        self.observe = True
        initial = fixed_range or bounds
        self.register_buffer("min_val", torch.tensor(initial[0] if initial else float("inf")))
        self.register_buffer("max_val", torch.tensor(initial[1] if initial else float("-inf")))
        self.fixed = fixed_range is not None
        self.bounds = bounds

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.clamp(self.min_val, max=0.0)
        hi = torch.clamp(self.max_val, min=0.0)
        if self.bounds is not None:
            lo = torch.clamp(lo, min=self.bounds[0])
            hi = torch.clamp(hi, max=self.bounds[1])
        scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
        zero_point = torch.clamp(torch.round(-128 - lo / scale), -128, 127).to(torch.int32)
        return scale.float().reshape(1), zero_point.reshape(1)

    @torch.no_grad()
    def _update(self, x: torch.Tensor) -> None:
        lo, hi = x.min().float(), x.max().float()
        if not torch.isfinite(self.min_val) or self.observer == "minmax":
            self.min_val.copy_(torch.minimum(self.min_val, lo) if torch.isfinite(self.min_val) else lo)
            self.max_val.copy_(torch.maximum(self.max_val, hi) if torch.isfinite(self.max_val) else hi)
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Ranges move while training (EMA) or calibrating (min/max), never during evaluation.
        if self.observe and not self.fixed and (self.training or self.observer == "minmax"):
            self._update(x)
        if not torch.isfinite(self.min_val):
            return x
        scale, zp = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127)


def folded_conv_params(m: ConvBN) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of ``m.conv`` with ``m.bn`` (running statistics) folded in."""
    bn = m.bn
    gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = m.conv.weight * gain.reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * gain
    if m.conv.bias is not None:
        bias = bias + m.conv.bias * gain
    return weight, bias


def quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 fake quantization ([-127, 127], TFLite's weight range)."""
    scale = weight.detach().abs().amax(dim=(1, 2, 3)).clamp(min=1e-12) / 127.0
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale.float(), zero_point, 0, -127, 127)


def qconv(m: ConvBN, x: torch.Tensor, out_q: ActivationQuantizer | None) -> torch.Tensor:
    """A ConvBN as TFLite runs it: folded, int8 weights, fused ReLU6, quantized output."""
    weight, bias = folded_conv_params(m)
    if m.stride == 2:
        x = F.pad(x, (0, 1, 0, 1))
    c = m.conv
    y = F.conv2d(x, quantize_weight(weight), bias, c.stride, c.padding, c.dilation, c.groups)
    if isinstance(m.act, nn.ReLU6):
        y = F.relu6(y)
    return out_q(y) if out_q is not None else y


class QATDetector(nn.Module):
    """Fake-quantized ST detector with the same interface as :class:`SSDMobileNetV1`."""

    is_qat = True

    def __init__(self, model: SSDMobileNetV1):
        super().__init__()
        self.model = model
        self.spec, self.input_size, self.num_classes = model.spec, model.input_size, model.num_classes
        n_lat = len(model.neck.lateral)

        def relu6():
            return ActivationQuantizer(bounds=(0.0, 6.0))

        self.q = nn.ModuleDict({
            "conv1": relu6(),
            **{f"b{i}_{p}": relu6() for i in range(len(model.backbone.blocks)) for p in ("dw", "pw")},
            **{f"e{i}_{p}": relu6() for i in range(len(model.neck.extras.blocks)) for p in ("dw", "pw")},
            **{f"lat{i}": ActivationQuantizer() for i in range(n_lat)},
            **{f"add{i}": ActivationQuantizer() for i in range(n_lat)},
            "gap": ActivationQuantizer(), "top": ActivationQuantizer(),
            **{f"{kind}{i}": ActivationQuantizer() for i in range(len(model.head.cls)) for kind in ("cls", "box")},
            "logits": ActivationQuantizer(), "offsets": ActivationQuantizer(),
            "scores": ActivationQuantizer((0.0, 255.0 / 256.0)),
        })

    # --- interface shared with SSDMobileNetV1 ---------------------------------------------------
    @property
    def anchors(self) -> torch.Tensor:
        return self.model.anchors

    @property
    def num_anchors(self) -> int:
        return self.model.num_anchors

    @property
    def backbone(self):
        return self.model.backbone

    @property
    def neck(self):
        return self.model.neck

    @property
    def head(self):
        return self.model.head

    def hparams(self) -> dict:
        return {**self.model.hparams(), "qat": True}

    def set_observer(self, observer: str = "ema", observe: bool = True) -> "QATDetector":
        """``ema`` while training, ``minmax`` for calibration (TFLite's rule); ``observe=False`` freezes."""
        if observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}, got {observer!r}")
        for q in self.q.values():
            q.observer, q.observe = observer, observe
        return self

    def reset_ranges(self) -> None:
        for q in self.q.values():
            if not q.fixed:
                q.min_val.fill_(float("inf"))
                q.max_val.fill_(float("-inf"))

    # --- forward -----------------------------------------------------------------------------------
    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, m = self.q, self.model
        # Device input: uint8 p with real value (p - 127)/127.5; x here is p/127.5 - 1.
        pixels = torch.clamp(torch.round((x + 1.0) * 127.5), 0, 255)
        x = x + ((pixels - INPUT_ZERO_POINT) * INPUT_SCALE - x).detach()
        x = qconv(m.backbone.conv1, x, q["conv1"])
        feats = []
        for i, block in enumerate(m.backbone.blocks):
            x = qconv(block.dw, x, q[f"b{i}_dw"])
            x = qconv(block.pw, x, q[f"b{i}_pw"])
            if i + 1 in (5, 11, 13):
                feats.append(x)
        spec = m.spec
        taps = [F.pad(f, p) if any(p) else f for f, p in zip(feats, spec.lateral_pads)]
        x = taps[-1]
        for i, block in enumerate(m.neck.extras.blocks):
            x = qconv(block.dw, x, q[f"e{i}_dw"])
            x = qconv(block.pw, x, q[f"e{i}_pw"])
            if i % 2 == 1:
                taps.append(x)
        p = qconv(m.neck.top, q["gap"](taps[-1].mean(dim=(2, 3), keepdim=True)), q["top"])
        pyramid = [p]
        n = len(m.neck.lateral)
        for i in reversed(range(n)):
            up = F.interpolate(p, scale_factor=2, mode="bilinear", align_corners=False)
            if i == n - 1 and any(spec.top_up_pad):
                up = F.pad(up, spec.top_up_pad)
            p = q[f"add{i}"](qconv(m.neck.lateral[i], taps[i], q[f"lat{i}"]) + up)
            pyramid.append(p)
        pyramid = pyramid[::-1]
        head = m.head
        # Each level's head conv has its own int8 output range; the concatenation requantizes them
        # to one shared range (TFLite rounds twice here, so the simulation does too).
        logits = torch.cat([flatten_nhwc(qconv(c, f, q[f"cls{i}"]), head.num_outputs)
                            for i, (c, f) in enumerate(zip(head.cls, pyramid))], 1)
        offsets = torch.cat([flatten_nhwc(qconv(b, f, q[f"box{i}"]), 4)
                             for i, (b, f) in enumerate(zip(head.box, pyramid))], 1)
        return q["logits"](logits), q["offsets"](offsets)

    def forward(self, x: torch.Tensor):
        logits, offsets = self.forward_logits(x)
        scores = self.q["scores"](logits.softmax(dim=-1))
        return scores, offsets, self.model.anchors.unsqueeze(0).expand(x.shape[0], -1, -1)

    def train(self, mode: bool = True):
        super().train(mode)
        # BN statistics stay frozen (folded with running stats, as TFLite will).
        for module in self.model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    # --- export ----------------------------------------------------------------------------------
    @torch.no_grad()
    def to_float(self) -> SSDMobileNetV1:
        """A float model with folded, int8-grid weights and identity BN, for the TFLite converter."""
        out = copy.deepcopy(self.model).eval()
        for module in out.modules():
            if isinstance(module, ConvBN):
                weight, bias = folded_conv_params(module)
                module.conv.weight.copy_(quantize_weight(weight))
                if module.conv.bias is not None:
                    module.conv.bias.zero_()
                bn = module.bn
                bn.weight.fill_(1.0)
                bn.bias.copy_(bias)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)  # var + eps == 1.0 exactly in float32
        return out


def prepare_qat(model: SSDMobileNetV1) -> QATDetector:
    """Wrap a float detector for quantization-aware fine-tuning (a no-op if it is already wrapped)."""
    return model if isinstance(model, QATDetector) else QATDetector(model)


@torch.no_grad()
def calibrate(model: QATDetector, batches, observer: str = "minmax") -> QATDetector:
    """Set activation ranges from data (post-training calibration; TFLite's min/max rule)."""
    was_training = model.training
    model.eval().set_observer(observer, observe=True)
    model.reset_ranges()
    for x in batches:
        model(x)
    model.set_observer("ema", observe=True)
    return model.train(was_training)
