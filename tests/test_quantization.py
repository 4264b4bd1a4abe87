import re
from pathlib import Path

import pytest

import torch

from ssd_mnv1.checkpoint import load_checkpoint, save_checkpoint
from ssd_mnv1.quantization import ActivationQuantizer, calibrate, is_qat, prepare_qat, to_float
from ssd_mnv1.quantization.qat import remap_legacy_qat_state

DATA = Path(__file__).parent / "data"


def _images(n=4, size=192):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 127.5 - 1


def test_qat_model_is_the_float_model_with_its_quantization_slots_filled(trained_like_model):
    model = trained_like_model()
    qat = prepare_qat(model)
    assert not is_qat(model) and is_qat(qat) and type(qat) is type(model)
    assert isinstance(qat.backbone.blocks[4].pw.output_quant, ActivationQuantizer)
    assert isinstance(qat.neck.add_quant[0], ActivationQuantizer) and isinstance(qat.head.cls_quant, ActivationQuantizer)
    # Same parameters, same names: only quantizer buffers are added.
    assert dict(model.named_parameters()).keys() == dict(qat.named_parameters()).keys()
    extra = set(qat.state_dict()) - set(model.state_dict())
    assert extra and all(k.endswith(("min_val", "max_val")) for k in extra)
    assert prepare_qat(qat) is qat


def test_folded_weights_are_on_a_per_channel_int8_grid_after_to_float(trained_like_model):
    qat = calibrate(prepare_qat(trained_like_model()), [_images()])
    flat = to_float(qat)
    assert not is_qat(flat) and isinstance(flat.backbone.conv1.output_quant, torch.nn.Identity)
    w = flat.backbone.blocks[3].pw.conv.weight
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    steps = w / scale
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    assert steps.abs().max() <= 127 + 1e-3


def test_to_float_bn_is_identity_and_matches_folded_conv(trained_like_model):
    qat = prepare_qat(trained_like_model())
    flat = to_float(qat)
    m = flat.neck.lateral[0]
    assert torch.equal(m.bn.running_var + m.bn.eps, torch.ones_like(m.bn.running_var))
    _, bias = qat.neck.lateral[0].folded_weight_and_bias()
    assert torch.allclose(m.bn.bias, bias)


def test_fake_quant_model_tracks_float_model_closely(trained_like_model):
    model = trained_like_model()
    qat = calibrate(prepare_qat(model), [_images()])
    x = _images(2)
    with torch.no_grad():
        fq_scores, fq_offsets, anchors = qat.eval()(x)
        f_scores, f_offsets, _ = model(x)
    assert 0 < (fq_scores - f_scores).abs().max() < 0.1
    assert torch.equal(anchors[0], model.anchors)
    # Softmax output sits on TFLite's fixed grid (scale 1/256).
    assert torch.allclose(fq_scores * 256, (fq_scores * 256).round(), atol=1e-4)


def test_bn_statistics_stay_frozen_while_qat_trains(trained_like_model):
    qat = prepare_qat(trained_like_model()).train()
    bn = qat.backbone.blocks[0].dw.bn
    assert not bn.training and qat.backbone.blocks[0].dw.training
    before = bn.running_mean.clone()
    qat(_images(2))
    assert torch.equal(bn.running_mean, before)


def test_relu6_ranges_start_at_zero_six_are_observed_but_never_exceed_it_and_freeze_in_eval(trained_like_model):
    fresh = prepare_qat(trained_like_model())
    scale, zp = fresh.backbone.conv1.output_quant.qparams()
    assert torch.allclose(scale, torch.tensor([6 / 255])) and zp.item() == -128
    qat = calibrate(prepare_qat(trained_like_model()), [_images()])
    for name, q in qat.named_modules():
        if isinstance(q, ActivationQuantizer) and q.bounds is not None:
            scale, zp = q.qparams()
            assert zp.item() == -128 and 0 < scale.item() <= 6 / 255 + 1e-9, name
    q = qat.backbone.conv1.output_quant
    with torch.no_grad():
        q.min_val.fill_(0.0)
        q.max_val.fill_(2.55)
    assert torch.allclose(q.qparams()[0], torch.tensor([0.01]))
    lateral = qat.neck.lateral[0].output_quant
    before = lateral.min_val.clone()
    with torch.no_grad():
        qat.eval()(_images(1) * 3)
    assert torch.equal(lateral.min_val, before)


def test_input_is_simulated_as_raw_uint8_pixels(trained_like_model):
    """The device feeds pixel p with real value (p - 127)/127.5, not p/127.5 - 1."""
    captured = []
    qat = prepare_qat(trained_like_model())
    qat.backbone.conv1.register_forward_pre_hook(lambda m, inp: captured.append(inp[0]))
    x = torch.zeros(1, 3, 192, 192)
    x[0, :, 0, 0] = 0 / 127.5 - 1
    x[0, :, 0, 1] = 200 / 127.5 - 1
    with torch.no_grad():
        qat.forward_logits(x)
    assert torch.allclose(captured[0][0, 0, 0, :2], torch.tensor([(0 - 127) / 127.5, (200 - 127) / 127.5]))


def test_qat_checkpoint_round_trips(trained_like_model, tmp_path):
    qat = calibrate(prepare_qat(trained_like_model()), [_images()])
    path = save_checkpoint(qat, tmp_path / "qat.ckpt")
    loaded = load_checkpoint(path)
    assert is_qat(loaded)
    x = _images(1)
    with torch.no_grad():
        for a, b in zip(qat.eval()(x), loaded.eval()(x)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("size", [192, 224])
def test_checkpoints_of_the_former_qat_wrapper_load_into_the_slots(trained_like_model, tmp_path, size):
    """The former QATDetector saved ``model.<float weights>`` and ``q.<name>.{min,max}_val``;
    tests/data holds its state-dict keys (written by that code) at both layouts (192, 224/256)."""
    legacy_keys = (DATA / f"legacy_qat_state_keys_{size}.txt").read_text().split()
    qat = calibrate(prepare_qat(trained_like_model(size)), [_images(2, size)])
    current = qat.state_dict()
    remapped_names = remap_legacy_qat_state({k: k for k in legacy_keys})
    assert sorted(remapped_names) == sorted(current), "every legacy key has one new home or is retired"
    retired = set(legacy_keys) - set(remapped_names.values())
    assert retired and all(re.fullmatch(r"q\.(cls|box)\d+\.(min|max)_val", k) for k in retired)
    legacy_state = {old: current[new] for new, old in remapped_names.items()}
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in legacy_state.items()},
                "hyper_parameters": {"alpha": 0.25, "input_size": size, "num_classes": 1, "qat": True}}, path)
    loaded = load_checkpoint(path).eval()
    x = _images(1, size)
    with torch.no_grad():
        for a, b in zip(qat.eval()(x), loaded(x)):
            assert torch.equal(a, b)
    # Spot-check the naming rule itself on a few keys.
    new_name = {old: new for new, old in remapped_names.items()}
    assert new_name["q.b4_pw.min_val"] == "backbone.blocks.4.pw.output_quant.min_val"
    assert new_name["q.add0.max_val"] == "neck.add_quant.0.max_val"
    assert new_name["q.logits.min_val"] == "head.cls_quant.min_val"
    assert new_name["model.neck.top.bn.bias"] == "neck.top.bn.bias"


def test_checkpoints_with_per_level_head_ranges_load_without_them(trained_like_model, tmp_path):
    """QAT checkpoints written before the head convs shared their concatenation's range still load."""
    qat = calibrate(prepare_qat(trained_like_model()), [_images()])
    state = {"model." + k: v for k, v in qat.state_dict().items()}
    for k in range(5):
        state[f"model.head.cls.{k}.output_quant.min_val"] = torch.tensor(-1.0)
        state[f"model.head.box.{k}.output_quant.max_val"] = torch.tensor(1.0)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {**qat.architecture(), "qat": True}}, path)
    loaded = load_checkpoint(path).eval()
    x = _images(1)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(qat.eval()(x), loaded(x)))
