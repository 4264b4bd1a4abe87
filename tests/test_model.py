import subprocess
import sys

import pytest
import torch

from ssd_mnv1 import build_model


@pytest.mark.parametrize("size, na", [(192, 3830), (224, 6825), (256, 6825)])
def test_forward_returns_st_triplet(size, na):
    model = build_model(input_size=size).eval()
    with torch.no_grad():
        scores, offsets, anchors = model(torch.zeros(2, 3, size, size))
    assert scores.shape == (2, na, 2) and offsets.shape == (2, na, 4) and anchors.shape == (2, na, 4)
    assert torch.allclose(scores.sum(-1), torch.ones(2, na))


def test_trainable_parameter_counts_match_st_files():
    # docs/st_model.md §1.1: 426,674 trainable at 192, 574,764 at 224/256 (backbone 218,544 with BN stats)
    def trainable(m):
        return sum(p.numel() for p in m.parameters())

    assert trainable(build_model(input_size=192)) == 426_674
    assert trainable(build_model(input_size=224)) == 574_764
    assert trainable(build_model(input_size=256)) == 574_764


@pytest.mark.parametrize("alpha, conv1, c5, c11, c13", [
    (0.25, 8, 64, 128, 256), (0.5, 16, 128, 256, 512), (0.75, 24, 192, 384, 768), (1.0, 32, 256, 512, 1024),
])
def test_channels_scale_with_alpha_like_keras(alpha, conv1, c5, c11, c13):
    model = build_model(alpha=alpha, input_size=192)
    assert model.backbone.conv1.conv.out_channels == conv1
    assert model.backbone.out_channels == (c5, c11, c13)
    with torch.no_grad():
        scores, _, _ = model.eval()(torch.zeros(1, 3, 192, 192))
    assert scores.shape == (1, 3830, 2)


def test_num_classes_sets_score_columns():
    model = build_model(input_size=256, num_classes=3).eval()
    with torch.no_grad():
        scores, _, _ = model(torch.zeros(1, 3, 256, 256))
    assert scores.shape == (1, 6825, 4)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"input_size": 300}, "192, 224, 256"),
    ({"alpha": 0.3}, "0.25"),
    ({"num_classes": 0}, "num_classes"),
])
def test_bad_configuration_is_refused_with_the_choices(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_model(**kwargs)


def test_import_does_not_pull_tensorflow():
    code = "import sys, ssd_mnv1, ssd_mnv1.weights; assert 'tensorflow' not in sys.modules, 'tf imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
