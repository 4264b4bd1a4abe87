"""Parity with ST's own Keras outputs (needs ../shared/reference; skips cleanly without it)."""

import numpy as np
import pytest
import torch

from conftest import st_h5
from ssd_mnv1 import load_keras_h5
from ssd_mnv1.preprocess import normalize


@pytest.mark.parametrize("size", [192, 224, 256])
def test_ported_st_model_reproduces_keras_outputs(reference_dir, size):
    ref = np.load(reference_dir / "test_vectors" / f"ref_outputs_{size}.npz")
    model = load_keras_h5(st_h5(reference_dir, size)).eval()
    assert model.input_size == size
    with torch.no_grad():
        scores, offsets, anchors = model(normalize(ref["input_uint8_hwc"])[None])
    assert np.abs(scores[0].numpy() - ref["float_scores"]).max() <= 1e-5
    assert np.abs(offsets[0].numpy() - ref["float_offsets"]).max() <= 1e-5
    assert np.array_equal(anchors[0].numpy(), ref["float_anchors"])


def test_imagenet_backbone_loads_into_a_detector(reference_dir):
    model = load_keras_h5(reference_dir / "mobilenet_v1_0.25_224_imagenet.h5")
    assert model.input_size == 224 and model.alpha == 0.25
    assert model.backbone.conv1.conv.weight.abs().sum() > 0
