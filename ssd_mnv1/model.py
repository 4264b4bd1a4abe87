"""The detector: MobileNetV1 backbone + ST's FPN-lite neck + SSD head, with ST's three outputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .anchors import generate_anchors
from .backbone import MobileNetV1
from .head import SSDHead
from .neck import FPNLite
from .specs import check_alpha, resolution_spec


class SSDMobileNetV1(nn.Module):
    """ST's ``st_ssd_mobilenet_v1`` in PyTorch.

    ``forward(x)`` with ``x`` float ``(N, 3, S, S)`` in [-1, 1] returns ``(scores, offsets, anchors)``:
    softmax scores ``(N, NA, 1 + num_classes)`` with background in column 0, corner offsets
    ``(N, NA, 4)`` and normalized anchors ``(N, NA, 4)`` - the tensors, order and anchor order of
    ST's .h5. Training code uses :meth:`forward_logits` to get the pre-softmax logits.

    The same modules and forward serve quantization-aware training: ``prepare_qat`` fills the
    quantization slots (``input_quant``, ``scores_quant`` and those of the conv blocks, neck and
    head) and sets ``qat``; the float model leaves them empty.
    """

    def __init__(self, alpha: float = 0.25, input_size: int = 224, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None):
        super().__init__()
        self.class_names = resolve_class_names(num_classes, class_names)
        self.alpha = check_alpha(alpha)
        self.spec = resolution_spec(input_size)
        self.input_size = self.spec.input_size
        self.num_classes = len(self.class_names)
        self.backbone = MobileNetV1(alpha)
        self.neck = FPNLite(self.backbone.out_channels, self.spec)
        self.head = SSDHead(self.spec, self.num_classes)
        self.register_buffer("anchors", generate_anchors(self.spec), persistent=False)
        self.qat = False
        self.input_quant: nn.Module = nn.Identity()
        self.scores_quant: nn.Module = nn.Identity()
        self.reset_parameters()

    @property
    def num_anchors(self) -> int:
        return self.spec.num_anchors

    def architecture(self) -> dict:
        """Constructor arguments, enough to rebuild the model from a checkpoint."""
        return {"alpha": self.alpha, "input_size": self.input_size, "num_classes": self.num_classes,
                "class_names": list(self.class_names)}

    def reset_parameters(self) -> None:
        """Keras initialisers: glorot-uniform backbone, he-normal (truncated) ST layers, zero biases."""
        for module in self.backbone.modules():
            if isinstance(module, nn.Conv2d):
                _keras_init(module, "glorot_uniform")
        for part in (self.neck, self.head):
            for module in part.modules():
                if isinstance(module, nn.Conv2d):
                    _keras_init(module, "he_normal")
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
                module.reset_running_stats()

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``(N, NA, 1+num_classes)`` and offsets ``(N, NA, 4)``."""
        return self.head(self.neck(self.backbone(self.input_quant(x))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.outputs(*self.forward_logits(x))

    def outputs(self, logits: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s ``(scores, offsets, anchors)`` from :meth:`forward_logits`' output."""
        anchors = self.anchors.unsqueeze(0).expand(logits.shape[0], -1, -1)
        return self.scores_quant(logits.softmax(dim=-1)), offsets, anchors


def resolve_class_names(num_classes: int | None = None, class_names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The model's class names (label 1, 2, ... in order) from either argument, checked.

    ``num_classes`` alone names them ``person`` (one class: ST's detector) or ``class1..classC``;
    with both, they must agree.
    """
    if class_names is not None:
        names = (class_names,) if isinstance(class_names, str) else tuple(str(n) for n in class_names)
        if not names:
            raise ValueError("class_names is empty: give at least one class name")
        if len(set(names)) != len(names):
            raise ValueError(f"class_names has duplicates: {list(names)}")
        if num_classes is not None and int(num_classes) != len(names):
            raise ValueError(f"num_classes {num_classes} does not match the {len(names)} class_names {list(names)}")
        return names
    n = 1 if num_classes is None else int(num_classes)
    if n < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    return ("person",) if n == 1 else tuple(f"class{i}" for i in range(1, n + 1))


def _keras_fans(conv: nn.Conv2d) -> tuple[int, int]:
    """Fan-in/out as Keras computes them from its own kernel layout.

    Keras sees a depthwise kernel as (kh, kw, C, 1), so its fan-in is kh*kw*C (not kh*kw).
    """
    kh, kw = conv.kernel_size
    if conv.groups > 1:
        return kh * kw * conv.in_channels, kh * kw
    return kh * kw * conv.in_channels, kh * kw * conv.out_channels


def _keras_init(conv: nn.Conv2d, kind: str) -> None:
    fan_in, fan_out = _keras_fans(conv)
    with torch.no_grad():
        if kind == "glorot_uniform":
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            conv.weight.uniform_(-limit, limit)
        else:  # he_normal: truncated normal at 2 std, std corrected for the truncation (Keras 2.8)
            std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
            nn.init.trunc_normal_(conv.weight, 0.0, std, -2 * std, 2 * std)
        if conv.bias is not None:
            conv.bias.zero_()
