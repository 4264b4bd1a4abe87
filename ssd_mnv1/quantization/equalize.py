"""Data-free quantization for per-tensor int8 weights (Nagel et al., ICCV 2019), made exact for ReLU6.

Per-tensor int8 (what the STM32MP25 NPU runs) gives a whole kernel one scale. ST's BN-folded
depthwise kernels have a few channels 10-80x larger than the median, so most channels are left
with a handful of int8 levels: ST-AP falls from 43 to 20 at 192. Three steps fix it:

1. :func:`fold_dead_channels` (exact, data-free): a channel whose pre-activation is provably
   <= 0 is always 0 after ReLU6, so the weights reading it can be zeroed; one whose weights are
   all ~0 is a constant, added into a 1x1 consumer's bias. Such channels hold the largest folded
   depthwise weights in ST's files (a dead input channel has running variance ~1e-44).
2. :func:`equalize_layers` (exact, data-free): cross-layer equalization of each producer /
   consumer pair (depthwise -> pointwise, pointwise -> depthwise): output channel ``i`` of the
   producer is divided by ``s_i`` and input channel ``i`` of the consumer multiplied by it, with
   ``s_i = sqrt(r1_i / r2_i)`` balancing their weight ranges. ReLU6 is not scale-invariant
   (the paper swaps it for ReLU, which changes the network), so a channel is scaled only when
   its pre-activation provably stays below 6 (interval bounds propagated from the image through
   the weights and biases) and never by less than that bound needs; other channels keep ``s_i = 1``.
3. :func:`correct_bias` (uses calibration images): subtracts from each conv's bias the mean
   output shift its int8 weights cause. This deliberately changes the float function, so it is
   applied only to the model that the int8 file is converted from.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import FEATURE_BLOCKS
from ..layers import ConvBN
from ..preprocess import INPUT_SCALE, INPUT_ZERO_POINT
from .qat import WeightQuantizer

#: ReLU6's output range, the input range of every conv but the first.
RELU6_MAX = 6.0
#: The largest |input| the first conv sees: the device's uint8 pixel 0 or 255 (zero point 127).
IMAGE_ABS_MAX = max(INPUT_ZERO_POINT, 255 - INPUT_ZERO_POINT) * INPUT_SCALE
#: Weights this small make a channel a constant (its output moves by less than this times 6).
CONSTANT_WEIGHT = 1e-7
#: CLE sweeps over all pairs; ranges settle within a few (the paper iterates to convergence).
EQUALIZATION_SWEEPS = 10


@dataclass
class EqualizationReport:
    dead_channels: int = 0          # weights reading an always-zero channel, zeroed (channels)
    constant_channels: int = 0      # constant channels added into the consumer's bias
    pairs: int = 0                  # producer/consumer pairs equalized
    scaled_channels: int = 0        # channels whose scale moved away from 1
    held_channels: int = 0          # channels that may reach ReLU6's clip: left unscaled (exactness)
    worst_range_ratio_before: float = 0.0  # max over layers of (largest / median channel range)
    worst_range_ratio_after: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def relu6_chain(model: nn.Module) -> list[ConvBN]:
    """The detector's sequential spine of ReLU6 conv blocks: conv1, the 13 backbone blocks (dw, pw),
    then the neck's extra blocks; the pyramid's taps branch off it."""
    chain = [model.backbone.conv1]
    for block in list(model.backbone.blocks) + list(model.neck.extras.blocks):
        chain += [block.dw, block.pw]
    return chain


def _taps(model: nn.Module) -> set[int]:
    backbone, extras = model.backbone, model.neck.extras.blocks
    taps = {id(backbone.blocks[k - 1].pw) for k in FEATURE_BLOCKS}
    return taps | {id(block.pw) for j, block in enumerate(extras) if j % 2 == 1}


def equalization_pairs(model: nn.Module) -> list[tuple[ConvBN, ConvBN]]:
    """(producer, consumer) neighbours of :func:`relu6_chain` where the producer feeds only the
    consumer: every link except from a tapped feature (C5, C11, C13 and the odd extra blocks also
    feed the neck's laterals)."""
    chain, taps = relu6_chain(model), _taps(model)
    return [(a, b) for a, b in zip(chain, chain[1:]) if id(a) not in taps]


@torch.no_grad()
def preactivation_bounds(model: nn.Module) -> dict[int, torch.Tensor]:
    """Per conv block of the chain (by ``id``), an upper bound of each channel's pre-activation that
    no input can exceed: interval propagation from the image's [-1, 1] through the chain, each
    ReLU6 output channel lying in [0, min(6, its bound)] (zero padding included)."""
    bounds: dict[int, torch.Tensor] = {}
    upper = None  # per input channel, the largest value it can take (None: the image)
    for conv in relu6_chain(model):
        weight, bias = conv.folded_weight_and_bias()
        if upper is None:
            bound = bias + weight.abs().flatten(1).sum(1) * IMAGE_ABS_MAX
        elif conv.conv.groups == 1:
            bound = bias + weight.clamp(min=0).sum(dim=(2, 3)) @ upper
        else:
            bound = bias + weight.clamp(min=0).flatten(1).sum(1) * upper
        bounds[id(conv)] = bound
        upper = bound.clamp(0.0, RELU6_MAX)
    return bounds


def _input_ranges(consumer: ConvBN) -> torch.Tensor:
    weight, _ = consumer.folded_weight_and_bias()
    if consumer.conv.groups == 1:
        return weight.abs().amax(dim=(0, 2, 3))
    return weight.abs().amax(dim=(1, 2, 3))


def _scale_consumer_inputs(consumer: ConvBN, factor: torch.Tensor) -> None:
    shape = (1, -1, 1, 1) if consumer.conv.groups == 1 else (-1, 1, 1, 1)
    consumer.conv.weight.mul_(factor.reshape(shape))


@torch.no_grad()
def fold_dead_channels(model: nn.Module) -> tuple[int, int]:
    """Zero the weights that read provably-zero channels; add provably-constant channels into a
    1x1 consumer's bias. Exact for every input. Returns (dead, constant) channel counts."""
    dead_count = constant_count = 0
    bounds = preactivation_bounds(model)
    for producer, consumer in equalization_pairs(model):
        weight, bias = producer.folded_weight_and_bias()
        dead = bounds[id(producer)] <= 0
        # Weights this small move the channel by < 6 * CONSTANT_WEIGHT * fan-in: a constant.
        constant = ~dead & (weight.abs().flatten(1).amax(1) < CONSTANT_WEIGHT)
        conv = consumer.conv
        if conv.groups == 1:
            conv.weight[:, dead] = 0
        else:
            conv.weight[dead] = 0
        dead_count += int(dead.sum())
        if constant.any() and conv.groups == 1 and conv.kernel_size == (1, 1) and conv.padding == (0, 0):
            value = bias[constant].clamp(0, RELU6_MAX)  # ReLU6 of the constant pre-activation
            shift = conv.weight[:, constant, 0, 0] @ value  # the consumer conv's output shift
            bn = consumer.bn
            bn.bias.add_(bn.weight / torch.sqrt(bn.running_var + bn.eps) * shift)
            conv.weight[:, constant] = 0
            constant_count += int(constant.sum())
    return dead_count, constant_count


@torch.no_grad()
def equalize_layers(model: nn.Module, sweeps: int = EQUALIZATION_SWEEPS) -> tuple[int, int]:
    """Cross-layer equalization of every pair, restricted to scales ReLU6 keeps exact.

    Returns (channels scaled, channels held at 1 because they may reach the clip).
    """
    pairs = equalization_pairs(model)
    total = {id(p): torch.ones(p.conv.out_channels) for p, _ in pairs}
    held = 0
    for sweep in range(sweeps):
        bounds = preactivation_bounds(model)  # a consumer's bound does not move when its inputs are
        for producer, consumer in pairs:      # rescaled (weights x s, inputs / s); the producer's does
            r1 = producer.folded_weight_and_bias()[0].abs().amax(dim=(1, 2, 3))
            r2 = _input_ranges(consumer)
            scale = torch.sqrt(r1 / r2.clamp(min=1e-12)).clamp(1e-3, 1e3)
            bound = bounds[id(producer)]
            may_clip = bound >= RELU6_MAX
            # s_i >= bound/6 keeps the scaled pre-activation below 6: ReLU6 acts as ReLU, exactly.
            scale = torch.maximum(scale, bound.clamp(min=0) / RELU6_MAX)
            scale = torch.where(may_clip | (r1 < 1e-12) | (r2 < 1e-12), torch.ones_like(scale), scale)
            producer.bn.weight.div_(scale)  # BN's affine scales the folded weights and bias alike
            producer.bn.bias.div_(scale)
            _scale_consumer_inputs(consumer, scale)
            total[id(producer)] *= scale
            bounds[id(producer)] = bound / scale
            if sweep == sweeps - 1:
                held += int(may_clip.sum())
    scaled = sum(int(((t - 1).abs() > 1e-6).sum()) for t in total.values())
    return scaled, held


def _worst_range_ratio(model: nn.Module) -> float:
    worst = 0.0
    for module in model.modules():
        if isinstance(module, ConvBN):
            ranges = module.folded_weight_and_bias()[0].detach().abs().amax(dim=(1, 2, 3))
            live = ranges[ranges > 1e-6]
            if live.numel():
                worst = max(worst, float(live.max() / live.median()))
    return worst


@torch.no_grad()
def equalize(model: nn.Module) -> tuple[nn.Module, EqualizationReport]:
    """A copy of a float detector with dead channels folded and layers equalized (both exact)."""
    from .qat import is_qat

    if is_qat(model):
        raise ValueError("equalize expects a float model (equalize before prepare_qat)")
    out = copy.deepcopy(model).eval()
    report = EqualizationReport(worst_range_ratio_before=_worst_range_ratio(out),
                                pairs=len(equalization_pairs(out)))
    report.dead_channels, report.constant_channels = fold_dead_channels(out)
    report.scaled_channels, report.held_channels = equalize_layers(out)
    report.worst_range_ratio_after = _worst_range_ratio(out)
    return out, report


@torch.no_grad()
def correct_bias(model: nn.Module, batches, per_tensor: bool) -> nn.Module:
    """A copy whose conv biases absorb the mean output error of their int8 weights (empirical bias
    correction): for each conv, the mean over the calibration images and positions of
    ``conv(x, Q(W) - W)`` is subtracted from the bias, ``x`` being the float model's input to it."""
    out = copy.deepcopy(model).eval()
    quantizer = WeightQuantizer(per_tensor)
    convs = [m for m in out.modules() if isinstance(m, ConvBN)]
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    hooks = []
    for module in convs:
        weight, _ = module.folded_weight_and_bias()
        error = quantizer(weight) - weight

        def hook(mod, inputs, _output, error=error):
            x = F.pad(inputs[0], (0, 1, 0, 1)) if mod.stride == 2 else inputs[0]
            c = mod.conv
            shift = F.conv2d(x, error, None, c.stride, c.padding, c.dilation, c.groups)
            sums[id(mod)] = sums.get(id(mod), 0) + shift.sum(dim=(0, 2, 3))
            counts[id(mod)] = counts.get(id(mod), 0) + shift.numel() // shift.shape[1]

        hooks.append(module.register_forward_hook(hook))
    try:
        for x in batches:
            out(x)
    finally:
        for h in hooks:
            h.remove()
    if not sums:
        raise ValueError("correct_bias needs at least one calibration batch")
    for module in convs:
        module.bn.bias.sub_(sums[id(module)] / counts[id(module)])  # folded bias = bn.bias + ...
    return out
