import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ssd_mnv1 import build_model
from ssd_mnv1.checkpoint import save_checkpoint
from ssd_mnv1.footprint_analysis import count_macs, tflite_architecture
from ssd_mnv1.footprint import main as footprint_main
from ssd_mnv1.zoo import st_files


@pytest.fixture()
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(build_model(input_size=192), tmp_path / "tiny.ckpt")


@pytest.mark.slow
def test_predict_draws_boxes_and_writes_pixel_detections(tmp_path, tiny_ckpt):
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)).save(images / "colour.jpg")
    Image.fromarray(rng.integers(0, 256, (120, 80), dtype=np.uint8), mode="L").save(images / "grey.png")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "ssd_mnv1.predict", str(tiny_ckpt), str(images), "--out", str(out),
                          "--score", "0.0", "--max-det", "3"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "detections.json").read_text())
    assert [r["width"] for r in report["images"]] == [160, 80]
    for r in report["images"]:
        assert len(r["detections"]) == 3
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= r["width"] and 0 <= y1 <= y2 <= r["height"]
            assert d["label"] == "person"
    drawn = np.asarray(Image.open(out / "colour.png"))
    assert drawn.shape == (90, 160, 3)
    assert ((drawn == (255, 64, 64)).all(-1)).sum() > 20  # the box colour is on the image


def test_predict_draws_boxes_whose_corners_decode_inverted():
    """Corner offsets of an untrained model can put x2 left of x1; drawing must not fail on it."""
    from ssd_mnv1.prediction import draw

    image = np.zeros((64, 64, 3), np.uint8)
    out = draw(image, np.array([[40.0, 30.0, 10.0, 5.0]]), np.array([0.9]), np.array([1]), ["person"])
    assert np.asarray(out)[5:31, 10].any()  # the box's left edge, at min(x1, x2)


@pytest.mark.slow
def test_predict_reports_a_missing_image_clearly(tmp_path, tiny_ckpt):
    res = subprocess.run([sys.executable, "-m", "ssd_mnv1.predict", str(tiny_ckpt), str(tmp_path / "nope.jpg"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert res.returncode == 2 and "nope.jpg" in res.stderr and "Traceback" not in res.stderr


def test_mac_count_follows_the_architecture():
    m192, m224 = count_macs(build_model(input_size=192), 192), count_macs(build_model(input_size=224), 224)
    # 192 and 224 graphs differ (extra levels, padded maps); more pixels, more MACs.
    assert 35e6 < m192 < m224 < 70e6


@pytest.mark.slow
def test_footprint_reports_size_memory_and_st_figures(tiny_ckpt):
    pytest.importorskip("tensorflow", reason="footprint needs the export extra")
    res = subprocess.run([sys.executable, "-m", "ssd_mnv1.footprint", str(tiny_ckpt), "--runs", "3"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "| parameters | 426,674" in out
    assert "peak activation memory" in out and "int8 TFLite size" in out
    assert "STM32H747 @400 MHz ms | 149.18" in out


def _tflite_outline(path, stem_channels: int, num_classes: int, size: int = 192):
    """A .tflite with only a detector's outline: a first convolution with ``stem_channels`` outputs
    and three outputs, scores (background + classes wide), offsets and anchors (4 wide)."""
    import tensorflow as tf

    w = tf.constant(0.1, shape=[3, 3, 3, stem_channels])

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
    def outline(x):
        v = tf.reduce_mean(tf.nn.conv2d(x, w, 2, "SAME"), axis=[1, 2])[:, None, :1]
        return tf.tile(v, [1, 10, num_classes + 1]), tf.tile(v, [1, 10, 4]), tf.tile(v, [1, 10, 4]) + 1

    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([outline.get_concrete_function()],
                                                                      outline).convert())
    return path


@pytest.fixture(scope="module")
def outlines(tmp_path_factory):
    pytest.importorskip("tensorflow", reason="reading .tflite files needs the export extra")
    root = tmp_path_factory.mktemp("outlines")
    return {(stem, classes): _tflite_outline(root / f"{stem}_{classes}.tflite", stem, classes)
            for stem, classes in ((16, 1), (32, 3), (12, 1))}


@pytest.mark.parametrize("stem,classes,alpha", [(16, 1, 0.5), (32, 3, 1.0)])
def test_tflite_architecture_is_read_from_the_file(outlines, stem, classes, alpha):
    assert tflite_architecture(outlines[stem, classes]) == {"alpha": alpha, "input_size": 192, "num_classes": classes}


def test_tflite_of_no_mobilenet_width_is_refused(outlines):
    with pytest.raises(ValueError, match="first convolution has 12 output channels"):
        tflite_architecture(outlines[12, 1])


def test_footprint_macs_of_a_tflite_follow_its_width(outlines, capsys):
    assert footprint_main([str(outlines[16, 1]), "--runs", "1"]) == 0
    macs = count_macs(build_model(alpha=0.5, input_size=192), 192)
    assert macs > 1.5 * count_macs(build_model(alpha=0.25, input_size=192), 192)
    assert f"| MACs per inference | {macs / 1e6:.1f} M |" in capsys.readouterr().out


@pytest.mark.reference
@pytest.mark.parametrize("size", [192, 224, 256])
def test_st_int8_files_read_as_alpha_quarter_person_detectors(reference_dir, size):
    pytest.importorskip("tensorflow", reason="reading .tflite files needs the export extra")
    assert tflite_architecture(st_files(reference_dir, size).int8_tflite) == {
        "alpha": 0.25, "input_size": size, "num_classes": 1}
