import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from keras_writer import write_keras_h5
from ssd_mnv1 import KerasImportError, build_model
from ssd_mnv1.weights import load_keras_h5
from ssd_mnv1.checkpoint import load_checkpoint


def _randomized(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.out_channels, generator=g) * 0.1)
    return model.eval()


def _outputs(model, size):
    x = torch.linspace(-1, 1, 3 * size * size).reshape(1, 3, size, size)
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("size", [192, 224, 256])
def test_detector_h5_round_trips_and_the_model_is_built_from_the_file(tmp_path, size):
    src = _randomized(build_model(input_size=size))
    path = write_keras_h5(src, tmp_path / "det.h5")
    loaded = load_keras_h5(path)
    assert loaded.architecture() == src.architecture()
    for a, b in zip(_outputs(src, size), _outputs(loaded, size)):
        assert torch.equal(a, b)


def test_imagenet_style_file_loads_backbone_only(tmp_path):
    src = _randomized(build_model(alpha=0.5, input_size=224))
    path = write_keras_h5(src, tmp_path / "mobilenet.h5", backbone_only=True)
    target = build_model(alpha=0.5, input_size=256)
    before = target.head.cls[0].conv.weight.clone()
    load_keras_h5(path, target)
    assert torch.equal(target.backbone.blocks[12].pw.conv.weight, src.backbone.blocks[12].pw.conv.weight)
    assert torch.equal(target.head.cls[0].conv.weight, before)


def test_wrong_alpha_names_the_layer_and_both_widths(tmp_path):
    path = write_keras_h5(build_model(alpha=0.5, input_size=224), tmp_path / "a05.h5", backbone_only=True)
    with pytest.raises(KerasImportError, match=r"conv1.*16 filters.*alpha 0.5.*expects 8"):
        load_keras_h5(path, build_model(alpha=0.25))


def test_wrong_shape_names_the_layer_and_both_shapes(tmp_path):
    model = build_model(input_size=224)
    bad = {"conv_pw_3": {"kernel": np.zeros((1, 1, 32, 48), np.float32)}}
    path = write_keras_h5(model, tmp_path / "bad.h5", overrides=bad)
    with pytest.raises(KerasImportError, match=r"'conv_pw_3'.*\(1, 1, 32, 48\).*\(1, 1, 32, 32\)"):
        load_keras_h5(path)


def test_missing_layer_is_named(tmp_path):
    path = write_keras_h5(build_model(input_size=192), tmp_path / "missing.h5", drop=("conv_dw_7_bn",))
    with pytest.raises(KerasImportError, match="conv_dw_7_bn"):
        load_keras_h5(path)


def test_file_of_another_resolution_is_refused(tmp_path):
    path = write_keras_h5(build_model(input_size=256), tmp_path / "r256.h5")
    with pytest.raises(KerasImportError, match="256x256.*224x224"):
        load_keras_h5(path, build_model(input_size=224))
    path = write_keras_h5(build_model(input_size=192), tmp_path / "r192.h5")
    with pytest.raises(KerasImportError, match="192"):
        load_keras_h5(path, build_model(input_size=224))


def test_truncated_file_gives_a_clear_error(tmp_path):
    path = write_keras_h5(build_model(input_size=192), tmp_path / "full.h5")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(KerasImportError, match="cut.h5"):
        load_keras_h5(cut)


def test_zero_byte_file_is_called_empty(tmp_path):
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(KerasImportError, match=r"empty.h5: empty file \(0 bytes\)"):
        load_keras_h5(tmp_path / "empty.h5")


def test_unsupported_or_non_square_input_layer_is_named(tmp_path):
    path = write_keras_h5(build_model(input_size=192), tmp_path / "r200.h5", input_size=200)
    with pytest.raises(KerasImportError, match=r"r200.h5: input layer 'input_1' is 200x200; .*multiple of 32 from 128 to 512"):
        load_keras_h5(path)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = f.attrs["model_config"].replace("[null, 200, 200, 3]", "[null, 192, 256, 3]")
    with pytest.raises(KerasImportError, match=r"input layer 'input_1' is 192x256 \(height x width\)"):
        load_keras_h5(path)


def test_non_keras_hdf5_is_refused(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("a", data=[1])
    with pytest.raises(KerasImportError, match="not a Keras weights file"):
        load_keras_h5(tmp_path / "x.h5")


@pytest.mark.slow
def test_convert_command_writes_a_loadable_checkpoint(tmp_path):
    src = _randomized(build_model(input_size=192))
    h5 = write_keras_h5(src, tmp_path / "det.h5")
    out = tmp_path / "ckpt" / "det.ckpt"
    res = subprocess.run([sys.executable, "-m", "ssd_mnv1.convert", str(h5), str(out)],
                         capture_output=True, text=True, check=True)
    assert "3830 anchors" in res.stdout
    for a, b in zip(_outputs(src, 192), _outputs(load_checkpoint(out), 192)):
        assert torch.equal(a, b)
    assert [p.name for p in out.parent.iterdir()] == ["det.ckpt"]  # no temp file left behind


@pytest.mark.slow
def test_convert_command_reports_a_missing_file_without_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ssd_mnv1.convert", str(tmp_path / "nope.h5"), str(tmp_path / "o.ckpt")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "nope.h5: no such model file" in res.stderr and "Traceback" not in res.stderr
