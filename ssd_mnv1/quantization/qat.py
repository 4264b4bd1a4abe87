"""Quantization-aware model that simulates TFLite's int8 arithmetic for ST's detector.

What TFLite does to this graph, and how it is simulated here (torch's fake-quantize ops, with
straight-through gradients):

* BatchNorm is folded into each conv (frozen running statistics), and the folded weights are
  quantized **per output channel, symmetric**, to [-127, 127].
* Activations are **per-tensor asymmetric int8** with observed (min/max) ranges. ReLU6 outputs are
  fused with their conv, so their range is observed within [0, 6]; on real images almost every
  layer reaches 6 (scale 6/255, zp -128, as in ST's file). Laterals, adds, the pooled top, the
  concatenated logits and offsets are unbounded. A pad and a bilinear x2 resize keep their
  input's quantization in TFLite, so no quantizer is placed after them (the resize's rounding to
  that grid is not simulated); a concatenation has one scale for its inputs and output, so the
  per-level head convs are quantized once, at the concatenation's range; a lateral conv's range
  also covers the sum it feeds (measured in TFLite's files).
* The input is uint8 with scale 1/127.5 and zero point 127 fed with raw pixels (the device's
  path): the network sees (p - 127)/127.5, half a step above p/127.5 - 1.
* The softmax output is fixed at scale 1/256, zp -128; outputs are dequantized to float.

The QAT model is the float :class:`SSDMobileNetV1` itself with its quantization slots filled
(:func:`prepare_qat`), so both run the same forward and ST's quirks live once, in the model.
:func:`to_float` returns a float model whose weights lie on the int8 grid and whose BN is the
identity, so the TFLite converter re-derives the same weight scales.
"""

from __future__ import annotations

import contextlib
import copy
import re

import torch
from torch import nn

from ..layers import ConvBN
from ..model import SSDMobileNetV1
from ..preprocess import INPUT_SCALE, INPUT_ZERO_POINT

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
        self.enabled = True  # False: observe only (calibration sees the float activations, as TFLite's)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.clamp(self.min_val, max=0.0)
        hi = torch.clamp(self.max_val, min=0.0)
        if self.bounds is not None:
            lo = torch.clamp(lo, min=self.bounds[0])
            hi = torch.clamp(hi, max=self.bounds[1])
        scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
        zero_point = torch.clamp(torch.round(-128 - lo / scale), -128, 127).to(torch.int32)
        return scale.float().reshape(1), zero_point.reshape(1)

    def observe_also(self, x: torch.Tensor) -> None:
        """Widen the range with a tensor this quantizer does not quantize (see ``FPNLite.forward``)."""
        if self.observe and not self.fixed and (self.training or self.observer == "minmax"):
            self._update(x)

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
        if not self.enabled or not torch.isfinite(self.min_val):
            return x
        scale, zp = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127)


class WeightQuantizer(nn.Module):
    """Symmetric int8 fake quantization ([-127, 127], TFLite's weight range), one scale per output
    channel or, with ``per_tensor`` (what the STM32MP25 NPU runs), one for the whole kernel."""

    def __init__(self, per_tensor: bool = False):
        super().__init__()
        self.per_tensor = per_tensor
        self.enabled = True

    def scales(self, weight: torch.Tensor) -> torch.Tensor:
        """The scale of each output channel (all equal when ``per_tensor``)."""
        amax = weight.detach().abs().amax(dim=(1, 2, 3))
        if self.per_tensor:
            amax = amax.max().expand_as(amax)
        return amax.clamp(min=1e-12).float() / 127.0

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        scale = self.scales(weight)
        if self.per_tensor:
            return torch.fake_quantize_per_tensor_affine(weight, scale[0], 0, -127, 127)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -127, 127)

    def extra_repr(self) -> str:
        return "per_tensor=True" if self.per_tensor else "per_channel"


class InputQuantizer(nn.Module):
    """The device's uint8 input: pixel p has real value (p - 127)/127.5; the model gets p/127.5 - 1.

    The forward value is the device's (half a step above), the gradient passes straight through.
    """

    def __init__(self):
        super().__init__()
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        pixels = torch.clamp(torch.round((x + 1.0) * 127.5), 0, 255)
        return x + ((pixels - INPUT_ZERO_POINT) * INPUT_SCALE - x).detach()


def is_qat(model: nn.Module) -> bool:
    """Whether ``model`` is a detector prepared for quantization-aware training."""
    return isinstance(model, SSDMobileNetV1) and model.qat


def prepare_qat(model: SSDMobileNetV1, inplace: bool = False, per_tensor: bool = False) -> SSDMobileNetV1:
    """``model`` (a copy unless ``inplace``, as torch.ao's ``prepare_qat``) with its quantization
    slots filled; a model already prepared is returned as it is (``per_tensor`` must then match).

    Every conv block folds its BN and gets int8 weights and an int8 output (ReLU6 outputs start
    at, and stay within, [0, 6]); the neck's pooled input and sums, the heads' concatenations and
    the softmax (fixed 1/256 scale, TFLite's) get output quantizers. The per-level head convs get
    none: TFLite quantizes them at their concatenation's scale.
    """
    if not isinstance(model, SSDMobileNetV1):
        raise TypeError(f"prepare_qat expects an SSDMobileNetV1, got {type(model).__name__}")
    if model.qat:
        if per_tensor_weights(model) != per_tensor:
            raise ValueError(f"the model is already prepared with {_granularity(not per_tensor)} weights, "
                             f"not {_granularity(per_tensor)}")
        return model
    if not inplace:
        model = copy.deepcopy(model)
    # TFLite's concatenation has one scale for its inputs and output, so each head conv writes its
    # int8 output at the concatenation's scale: cls_quant / box_quant quantize it, once.
    head_convs = {id(m) for m in list(model.head.cls) + list(model.head.box)}
    for m in model.modules():
        if isinstance(m, ConvBN):
            m.weight_quant = WeightQuantizer(per_tensor)
            relu6 = isinstance(m.act, nn.ReLU6)
            if id(m) not in head_convs:
                m.output_quant = ActivationQuantizer(bounds=(0.0, 6.0) if relu6 else None)
    model.neck.gap_quant = ActivationQuantizer()
    model.neck.add_quant = nn.ModuleList(ActivationQuantizer() for _ in model.neck.lateral)
    model.head.cls_quant = ActivationQuantizer()
    model.head.box_quant = ActivationQuantizer()
    model.input_quant = InputQuantizer()
    model.scores_quant = ActivationQuantizer(fixed_range=(0.0, 255.0 / 256.0))
    model.qat = True
    device = next(model.parameters()).device
    return model.to(device).train(model.training)


def per_tensor_weights(model: nn.Module) -> bool:
    """Whether a QAT model's weights are quantized per tensor (False for per-channel or float)."""
    return any(isinstance(m, WeightQuantizer) and m.per_tensor for m in model.modules())


def _granularity(per_tensor: bool) -> str:
    return "per-tensor" if per_tensor else "per-channel"


def activation_quantizers(model: nn.Module) -> list[ActivationQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActivationQuantizer)]


def set_observer(model: nn.Module, observer: str = "ema", observe: bool = True) -> nn.Module:
    """``ema`` while training, ``minmax`` for calibration (TFLite's rule); ``observe=False`` freezes."""
    if observer not in OBSERVERS:
        raise ValueError(f"observer must be one of {OBSERVERS}, got {observer!r}")
    for q in activation_quantizers(model):
        q.observer, q.observe = observer, observe
    return model


def reset_ranges(model: nn.Module) -> None:
    for q in activation_quantizers(model):
        if not q.fixed:
            q.min_val.fill_(float("inf"))
            q.max_val.fill_(float("-inf"))


@torch.no_grad()
def to_float(model: SSDMobileNetV1, on_grid: bool = True) -> SSDMobileNetV1:
    """A float copy with folded, int8-grid weights, identity BN and empty quantization slots,
    for the TFLite converter (which then re-derives the same weight scales). ``on_grid`` False
    keeps the folded float weights as they are: the float model a post-training export starts
    from (a QAT run whose guard kept its start exports as that start would)."""
    if not is_qat(model):
        raise ValueError("to_float expects a model prepared with prepare_qat")
    out = copy.deepcopy(model).eval()
    for module in out.modules():
        if isinstance(module, ConvBN):
            weight, bias = module.folded_weight_and_bias()
            module.conv.weight.copy_(module.weight_quant(weight) if on_grid else weight)
            if module.conv.bias is not None:
                module.conv.bias.zero_()
            bn = module.bn
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # var + eps == 1.0 exactly in float32
            module.weight_quant, module.output_quant = None, nn.Identity()
    out.neck.gap_quant = nn.Identity()
    out.neck.add_quant = nn.ModuleList(nn.Identity() for _ in out.neck.lateral)
    out.head.cls_quant, out.head.box_quant = nn.Identity(), nn.Identity()
    out.input_quant, out.scores_quant = nn.Identity(), nn.Identity()
    out.qat = False
    return out


@contextlib.contextmanager
def fake_quant_disabled(model: nn.Module, weights: bool = True):
    """Run ``model`` with its activation and input quantizers observing only (values pass through)
    and, if ``weights``, float weights too; restores them afterwards."""
    kinds = (ActivationQuantizer, InputQuantizer) + ((WeightQuantizer,) if weights else ())
    switched = [m for m in model.modules() if isinstance(m, kinds) and m.enabled]
    for m in switched:
        m.enabled = False
    try:
        yield model
    finally:
        for m in switched:
            m.enabled = True


@torch.no_grad()
def calibrate(model: SSDMobileNetV1, batches, observer: str = "minmax", *,
              float_weights: bool = False) -> SSDMobileNetV1:
    """Set activation ranges from data with TFLite's rule: min/max of each tensor of the float graph
    the converter calibrates, i.e. with activations (and the input) unquantized.

    The weights are those the TFLite converter sees: on the int8 grid (``to_float`` of a QAT model,
    the default) or, with ``float_weights``, the float ones (post-training quantization of a float
    model), so that the int8 file and a QDQ ONNX written from ``model`` carry the same scales.
    """
    was_training = model.training
    model.eval()
    set_observer(model, observer, observe=True)
    reset_ranges(model)
    with fake_quant_disabled(model, weights=float_weights):
        for x in batches:
            model(x)
    set_observer(model, "ema", observe=True)
    return model.train(was_training)


#: Old QAT checkpoints (a wrapper with the detector under ``model.`` and quantizers in a ``q``
#: dict) -> the slot that holds each quantizer now.
_LEGACY_QUANTIZERS = (
    (r"conv1", "backbone.conv1.output_quant"),
    (r"b(\d+)_(dw|pw)", r"backbone.blocks.\1.\2.output_quant"),
    (r"e(\d+)_(dw|pw)", r"neck.extras.blocks.\1.\2.output_quant"),
    (r"lat(\d+)", r"neck.lateral.\1.output_quant"),
    (r"add(\d+)", r"neck.add_quant.\1"),
    (r"gap", "neck.gap_quant"),
    (r"top", "neck.top.output_quant"),
    (r"cls(\d+)", r"head.cls.\1.output_quant"),  # retired below: the head convs share the concat's
    (r"box(\d+)", r"head.box.\1.output_quant"),  # scale
    (r"logits", "head.cls_quant"),
    (r"offsets", "head.box_quant"),
    (r"scores", "scores_quant"),
)


#: Quantizers older QAT checkpoints have and today's model does not (their ranges are dropped).
_RETIRED_QUANTIZERS = re.compile(r"head\.(cls|box)\.\d+\.output_quant\.")


def remap_legacy_qat_state(state: dict, prefix: str = "") -> dict:
    """Rename an old QAT state dict's keys (``model.<float>``, ``q.<name>.min_val``) to today's and
    drop the ranges of retired quantizers (the per-level head outputs).

    Only keys under ``prefix`` (a Lightning checkpoint's ``"model."``) are the detector's; the rest
    pass through, and so does a current state dict.
    """
    if any(k.startswith(prefix + "q.") for k in state):
        state = {prefix + _legacy_key(key[len(prefix):]) if key.startswith(prefix) else key: value
                 for key, value in state.items()}
    return {key: value for key, value in state.items()
            if not (key.startswith(prefix) and _RETIRED_QUANTIZERS.match(key[len(prefix):]))}


def _legacy_key(key: str) -> str:
    if key.startswith("model."):
        return key[len("model."):]
    name, _, leaf = key[len("q."):].rpartition(".")
    for pattern, target in _LEGACY_QUANTIZERS:
        if key.startswith("q.") and re.fullmatch(pattern, name):
            return f"{re.sub(pattern, target, name)}.{leaf}"
    return key  # not a legacy key: let load_state_dict report it
