"""One way in: ``load_model`` / ``build_model(weights=...)`` for every model file the project opens."""

import pytest
import torch

from ssd_mnv1 import MODEL_SUFFIXES, build_model, load_model
from ssd_mnv1.checkpoint import save_checkpoint
from ssd_mnv1.loading import model_format
from ssd_mnv1.quantization import calibrate, is_qat, prepare_qat
from ssd_mnv1.runners import open_runner


def _random(size=192, seed=0):
    torch.manual_seed(seed)
    return build_model(input_size=size).eval()


def test_model_format_names_every_kind_and_rejects_the_rest(tmp_path):
    for kind, suffixes in MODEL_SUFFIXES.items():
        for suffix in suffixes:
            assert model_format(tmp_path / f"m{suffix.upper()}") == kind
    with pytest.raises(ValueError, match=r"m\.pb: unknown model file type '\.pb'"):
        model_format(tmp_path / "m.pb")


def test_float_and_qat_checkpoints_load_as_the_model_they_were(tmp_path):
    model = _random()
    qat = calibrate(prepare_qat(model), [torch.rand(2, 3, 192, 192) * 2 - 1])
    for m, name in ((model, "float.ckpt"), (qat, "qat.ckpt")):
        loaded = load_model(save_checkpoint(m, tmp_path / name)).eval()
        assert is_qat(loaded) == is_qat(m)
        x = torch.rand(1, 3, 192, 192) * 2 - 1
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(m.eval()(x), loaded(x)))


def test_build_model_weights_takes_the_float_weights_of_a_qat_checkpoint(tmp_path):
    qat = calibrate(prepare_qat(_random()), [torch.rand(2, 3, 192, 192) * 2 - 1])
    built = build_model(input_size=192, weights=save_checkpoint(qat, tmp_path / "qat.ckpt"))
    assert not is_qat(built)
    for name, p in built.named_parameters():
        assert torch.equal(p, qat.get_parameter(name)), name


def test_build_model_weights_refuses_another_architecture(tmp_path):
    path = save_checkpoint(_random(192), tmp_path / "m192.ckpt")
    with pytest.raises(ValueError, match=r"m192\.ckpt: weights are for .*'input_size': 192"):
        build_model(input_size=224, weights=path)


def test_deployed_files_are_run_not_loaded(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"m\.onnx: an ONNX file is a deployed graph"):
        load_model(onnx)
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt: no such model file"):
        load_model(tmp_path / "nope.ckpt")


def test_the_runner_factory_opens_checkpoints_through_load_model(tmp_path):
    model = _random()
    runner = open_runner(save_checkpoint(model, tmp_path / "m.ckpt"))
    images = (torch.rand(2, 192, 192, 3) * 255).to(torch.uint8).numpy()
    scores, offsets, anchors = runner(images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        ref = model(x)
    assert torch.equal(torch.from_numpy(scores), ref[0]) and torch.equal(torch.from_numpy(offsets), ref[1])
