"""Parity with ST's own Keras outputs, and ST's file names (``ssd_mnv1.zoo``) against the files themselves
(needs ../shared/reference; skips cleanly without it)."""

import numpy as np
import pytest
import torch

from ssd_mnv1 import build_model, load_model
from ssd_mnv1.weights import load_keras_h5
from ssd_mnv1.preprocess import to_tensor
from ssd_mnv1.zoo import CARDS, st_files, st_release


@pytest.mark.parametrize("size", [192, 224, 256])
def test_ported_st_model_reproduces_keras_outputs(reference_dir, size):
    ref = np.load(reference_dir / "test_vectors" / f"ref_outputs_{size}.npz")
    model = load_model(st_files(reference_dir, size).h5).eval()
    assert model.input_size == size
    with torch.no_grad():
        scores, offsets, anchors = model(to_tensor(ref["input_uint8_hwc"])[None])
    assert np.abs(scores[0].numpy() - ref["float_scores"]).max() <= 1e-5
    assert np.abs(offsets[0].numpy() - ref["float_offsets"]).max() <= 1e-5
    assert np.array_equal(anchors[0].numpy(), ref["float_anchors"])


def test_imagenet_backbone_loads_into_a_detector(reference_dir):
    imagenet = reference_dir / "mobilenet_v1_0.25_224_imagenet.h5"
    model = load_keras_h5(imagenet)
    assert model.input_size == 224 and model.alpha == 0.25
    assert model.backbone.conv1.conv.weight.abs().sum() > 0
    built = build_model(input_size=192, weights=imagenet)
    assert torch.equal(built.backbone.blocks[12].pw.conv.weight, model.backbone.blocks[12].pw.conv.weight)
    with pytest.raises(ValueError, match="backbone .ImageNet. file, not a detector"):
        load_model(imagenet)


@pytest.mark.reference
@pytest.mark.parametrize("size", [192, 224, 256])
def test_zoo_names_st_files_as_they_lie_in_the_reference_folder(reference_dir, size):
    st = st_files(reference_dir, size, must_exist=True)
    assert st.config.is_file()
    release = st_release(size)
    assert release.input_size == size and release.alpha == 0.25
    assert set(release.published_ap) == {card.key for card in CARDS}


def test_zoo_names_every_missing_st_file_and_refuses_unreleased_sizes(tmp_path):
    st = st_files(tmp_path, 224)
    with pytest.raises(FileNotFoundError) as missing:
        st_files(tmp_path, 224, must_exist=True)
    assert str(st.h5) in str(missing.value) and str(st.int8_tflite) in str(missing.value)
    with pytest.raises(ValueError, match="192, 224, 256"):
        st_release(300)
