"""Our trainer's step against one step of ST's own 2.0 Keras trainer (``../shared/reference/train_step``).

``bench/train_step_parity.py`` prints the full comparison of :mod:`ssd_mnv1.training.step_parity`.
What is asserted here is what a port can be held to: TensorFlow's own two CPU kernel sets (oneDNN,
which made the vectors, and Eigen) disagree on the backbone gradients by up to 9.6 % of a variable's
largest entry and on the BN statistics by 2.2e-3 (``bench/train_step_tf_floor.py``), so those are
bounded at twice that floor; everything that does not pass through the chain of training-mode BN
layers is held to the issue's thresholds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssd_mnv1.anchors import generate_anchors
from ssd_mnv1.training.step_parity import train_step_parity
from ssd_mnv1.zoo import st_files


@pytest.fixture(scope="module")
def train_step_dir(reference_dir):
    folder = reference_dir / "train_step"
    if not (folder / "batchA_224.npz").is_file():
        pytest.skip(f"ST's train-step vectors not present at {folder}")
    return folder


@pytest.mark.parametrize("size", [192, 224])
def test_float64_anchors_are_st_matcher_anchors_bit_for_bit(train_step_dir, size):
    st = np.load(train_step_dir / f"batchA_{size}.npz")["anchors_f64"]
    assert np.array_equal(generate_anchors(size, torch.float64).numpy(), st)


@pytest.mark.parametrize("size", [192, 224])
def test_trainer_step_matches_st_keras_step(reference_dir, train_step_dir, size):
    r = train_step_parity(train_step_dir / f"batchA_{size}.npz", st_files(reference_dir, size).h5)
    assert r["positives_equal"] and r["n_positive_ours"] == r["n_positive_st"]
    assert r["max_abs_target_offset_diff"] <= 1e-6
    for part in ("total", "cls", "loc", "reg"):
        assert r[f"loss_{part}_rel_diff"] <= 1e-5, part
    assert r["optimizer_on_st_grads_max_abs_diff"] <= 1e-6  # Keras' Adam, epsilon placement included
    assert r["grad_rel_diff_st_layers"] <= 1e-3  # neck and head: matcher, loss, L2
    assert r["grad_rel_diff"] <= 0.2 and r["grad_rel_l2_diff"] <= 0.08  # backbone: 2x TF's kernel floor
    assert r["bn_stats_max_abs_diff"] <= 4.4e-3
