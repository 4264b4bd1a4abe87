import torch

from ssd_mnv1 import build_model
from ssd_mnv1.checkpoint import load_checkpoint, save_checkpoint
from ssd_mnv1.quantization import calibrate, prepare_qat
from ssd_mnv1.quantization.qat import folded_conv_params


def _model():
    torch.manual_seed(0)
    model = build_model(input_size=192)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.2, 0.2)
    return model.eval()


def _images(n=4, size=192):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 127.5 - 1


def test_folded_weights_are_on_a_per_channel_int8_grid_after_to_float():
    qat = calibrate(prepare_qat(_model()), [_images()])
    flat = qat.to_float()
    w = flat.backbone.blocks[3].pw.conv.weight
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    steps = w / scale
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    assert steps.abs().max() <= 127 + 1e-3


def test_to_float_bn_is_identity_and_matches_folded_conv():
    qat = prepare_qat(_model())
    flat = qat.to_float()
    m = flat.neck.lateral[0]
    assert torch.equal(m.bn.running_var + m.bn.eps, torch.ones_like(m.bn.running_var))
    _, bias = folded_conv_params(qat.model.neck.lateral[0])
    assert torch.allclose(m.bn.bias, bias)


def test_fake_quant_model_tracks_float_model_closely():
    model = _model()
    qat = calibrate(prepare_qat(model), [_images()])
    x = _images(2)
    with torch.no_grad():
        fq_scores, fq_offsets, anchors = qat.eval()(x)
        f_scores, f_offsets, _ = model(x)
    assert (fq_scores - f_scores).abs().max() < 0.1
    assert torch.equal(anchors[0], model.anchors)
    # Softmax output sits on TFLite's fixed grid (scale 1/256).
    assert torch.allclose(fq_scores * 256, (fq_scores * 256).round(), atol=1e-4)


def test_relu6_ranges_start_at_zero_six_are_observed_but_never_exceed_it_and_freeze_in_eval():
    fresh = prepare_qat(_model())
    scale, zp = fresh.q["conv1"].qparams()
    assert torch.allclose(scale, torch.tensor([6 / 255])) and zp.item() == -128
    qat = calibrate(prepare_qat(_model()), [_images()])
    for name, q in qat.q.items():
        if q.bounds is not None:
            scale, zp = q.qparams()
            assert zp.item() == -128 and 0 < scale.item() <= 6 / 255 + 1e-9, name
    q = qat.q["conv1"]
    with torch.no_grad():
        q.min_val.fill_(0.0)
        q.max_val.fill_(2.55)
    assert torch.allclose(q.qparams()[0], torch.tensor([0.01]))
    before = qat.q["lat0"].min_val.clone()
    with torch.no_grad():
        qat.eval()(_images(1) * 3)
    assert torch.equal(qat.q["lat0"].min_val, before)


def test_input_is_simulated_as_raw_uint8_pixels(monkeypatch):
    """The device feeds pixel p with real value (p - 127)/127.5, not p/127.5 - 1."""
    from ssd_mnv1.quantization import qat as qat_mod

    captured = []
    original = qat_mod.qconv
    monkeypatch.setattr(qat_mod, "qconv", lambda m, inp, out_q: captured.append(inp) or original(m, inp, out_q))
    x = torch.zeros(1, 3, 192, 192)
    x[0, :, 0, 0] = 0 / 127.5 - 1
    x[0, :, 0, 1] = 200 / 127.5 - 1
    with torch.no_grad():
        prepare_qat(_model()).forward_logits(x)
    first = captured[0]
    assert torch.allclose(first[0, 0, 0, :2], torch.tensor([(0 - 127) / 127.5, (200 - 127) / 127.5]))


def test_qat_checkpoint_round_trips(tmp_path):
    qat = calibrate(prepare_qat(_model()), [_images()])
    path = save_checkpoint(qat, tmp_path / "qat.ckpt")
    loaded = load_checkpoint(path)
    assert getattr(loaded, "is_qat", False)
    x = _images(1)
    with torch.no_grad():
        for a, b in zip(qat.eval()(x), loaded.eval()(x)):
            assert torch.equal(a, b)
