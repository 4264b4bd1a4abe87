"""Equalization for per-tensor int8: exact on every input, and it is what makes per-tensor work."""

import pytest
import torch

from ssd_mnv1.layers import ConvBN
from ssd_mnv1.preprocess import INPUT_SCALE, INPUT_ZERO_POINT
from ssd_mnv1.quantization import prepare_qat
from ssd_mnv1.quantization.equalize import (correct_bias, equalization_pairs, equalize, preactivation_bounds,
                                            relu6_chain)
from ssd_mnv1.quantization.qat import WeightQuantizer


def _like_st(model):
    """ST's files' pathologies: dead channels (running variance ~0 behind an always-zero input,
    huge folded weights), a constant channel, and a few depthwise channels far above the median."""
    with torch.no_grad():
        first = model.backbone.conv1
        first.conv.weight[1] = 0.0
        first.bn.bias[1] = -1.0                       # always 0 after ReLU6: a dead channel
        dw = model.backbone.blocks[0].dw
        dw.bn.running_var[1] = 1e-12                  # its consumer's folded weights explode
        dw2 = model.backbone.blocks[2].dw
        dw2.conv.weight[3] = 1e-12
        dw2.bn.bias[3] = 2.0                          # a constant channel (2.0 after ReLU6)
        for block in model.backbone.blocks[:4]:
            block.dw.bn.weight[0] *= 40.0             # one channel 40x the others
    return model


def _inputs(size: int, n: int = 6) -> torch.Tensor:
    """Images a device can feed, extremes included: raw uint8 pixels through the input contract."""
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (n, 3, size, size), generator=g).float()
    pixels[0], pixels[1] = 0.0, 255.0
    return (pixels - INPUT_ZERO_POINT) * INPUT_SCALE


def _weight_sqnr(model, per_tensor: bool) -> float:
    """Worst depthwise layer's median channel int8-weight SQNR (dB): per tensor, a layer's small
    channels are the ones that lose their resolution."""
    quantizer, sqnr = WeightQuantizer(per_tensor), []
    for m in model.modules():
        if isinstance(m, ConvBN) and m.conv.groups > 1:
            w = m.folded_weight_and_bias()[0].detach()
            signal = (w ** 2).flatten(1).sum(1)
            noise = ((quantizer(w) - w) ** 2).flatten(1).sum(1)
            live = signal > 1e-12
            sqnr.append(float((10 * torch.log10(signal[live] / noise[live].clamp(min=1e-30))).median()))
    return min(sqnr)


def test_equalized_model_gives_the_same_outputs_on_any_input(trained_like_model):
    model = _like_st(trained_like_model(192))
    equalized, report = equalize(model)
    x = _inputs(192)
    with torch.no_grad():
        for a, b in zip(model(x), equalized(x)):
            assert torch.allclose(a, b, atol=2e-5, rtol=1e-4), float((a - b).abs().max())
    assert report.dead_channels >= 1 and report.constant_channels >= 1 and report.scaled_channels > 0
    assert report.worst_range_ratio_after < report.worst_range_ratio_before / 2
    assert model.backbone.conv1.bn.bias[1] == -1.0, "the input model is left as it was"


def test_equalization_raises_the_per_tensor_weight_sqnr(trained_like_model):
    model = _like_st(trained_like_model(192))
    equalized, _ = equalize(model)
    before, after = _weight_sqnr(model, per_tensor=True), _weight_sqnr(equalized, per_tensor=True)
    assert after > before + 6.0, (before, after)  # at least one more bit of resolution


def test_a_channel_that_may_reach_the_relu6_clip_is_not_rescaled(trained_like_model):
    """Scaling a ReLU6 channel changes where it clips; only provably unclipped channels move."""
    model = _like_st(trained_like_model(192))
    bounds = preactivation_bounds(model)
    equalized, _ = equalize(model)
    for (producer, _), (eq_producer, _) in zip(equalization_pairs(model), equalization_pairs(equalized)):
        may_clip = bounds[id(producer)] >= 6.0
        ratio = eq_producer.bn.weight[may_clip] / producer.bn.weight[may_clip]
        assert torch.allclose(ratio, torch.ones_like(ratio)), producer


def test_pairs_follow_the_chain_and_skip_the_tapped_features(trained_like_model):
    model = trained_like_model(224)
    chain, pairs = relu6_chain(model), equalization_pairs(model)
    assert all(chain.index(b) == chain.index(a) + 1 for a, b in pairs)
    producers = {id(a) for a, _ in pairs}
    for k in (5, 11, 13):  # C5, C11, C13 also feed the laterals
        assert id(model.backbone.blocks[k - 1].pw) not in producers
    # every link but those leaving C5, C11, C13 and the odd extra blocks that are not last
    assert len(pairs) == len(chain) - 1 - 3 - (len(model.neck.extras.blocks) // 2 - 1)


def test_bias_correction_removes_the_mean_output_shift_of_int8_weights(trained_like_model):
    model = _like_st(trained_like_model(192))
    x = _inputs(192, 4)
    corrected = correct_bias(model, [x], per_tensor=True)

    def mean_shift(float_model) -> float:
        quant = prepare_qat(float_model, per_tensor=True)
        for m in quant.modules():  # weights only: the correction's target
            if hasattr(m, "enabled") and not isinstance(m, WeightQuantizer):
                m.enabled = False
        with torch.no_grad():
            return float((quant(x)[1] - model(x)[1]).mean(dim=(0, 1)).abs().max())

    assert mean_shift(corrected) < 0.5 * mean_shift(model)


def test_st_detector_equalizes_exactly_on_real_images(reference_dir, coco_person_val):
    from ssd_mnv1 import load_model
    from ssd_mnv1.data import open_dataset
    from ssd_mnv1.evaluation import resize_all
    from ssd_mnv1.preprocess import normalize
    from ssd_mnv1.zoo import st_files

    model = load_model(st_files(reference_dir, 192, must_exist=True).h5).eval()
    images = resize_all(open_dataset(coco_person_val), 192, progress=False, limit=8)
    x = torch.from_numpy(normalize(images)).permute(0, 3, 1, 2)
    equalized, report = equalize(model)
    with torch.no_grad():
        for a, b in zip(model(x), equalized(x)):
            assert float((a - b).abs().max()) < 1e-4
    assert report.dead_channels > 100  # ST's files: channels whose input is always zero
    assert _weight_sqnr(equalized, True) > _weight_sqnr(model, True) + 6.0
