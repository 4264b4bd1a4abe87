"""ST's training recipe pieces: matching, loss, weight decay groups, augmentation, collate, DDP merge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssd_mnv1.metrics import STAPEvaluator
from ssd_mnv1.postprocess import Detections
from ssd_mnv1.training import (NO_AUGMENTATION, Augmentation, DetectionCollate, DetectionSamples,
                               SSDLightningModule, SyntheticPersons, hard_negative_mining_loss,
                               match_anchors, softmax_focal_loss, ssd_loss)
from ssd_mnv1.training.loss import l2_penalty
from ssd_mnv1.training.module import st_added_kernels
from ssd_mnv1.training.optim import KerasAdam


def _anchors():
    return torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.45, 0.5],
                         [0.6, 0.0, 1.0, 0.2]])


# ------------------------------------------------------------------------------------- matcher
def test_every_gt_gets_its_best_anchor_even_below_the_threshold():
    gt = torch.tensor([[0.5, 0.5, 0.7, 0.7]])  # IoU with anchor 1 is 0.16
    matched = match_anchors(gt, _anchors())
    assert matched.tolist() == [-1, 0, -1, -1]


def test_anchors_at_or_above_half_iou_join_the_bipartite_match():
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5]])  # anchor 0 exact, anchor 2 IoU 0.9
    assert match_anchors(gt, _anchors()).tolist() == [0, -1, 0, -1]


def test_bipartite_step_gives_two_gts_wanting_one_anchor_different_anchors():
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.46, 0.5]])
    matched = match_anchors(gt, _anchors(), iou_threshold=0.99)
    assert sorted(matched[[0, 2]].tolist()) == [0, 1] and matched[0] != matched[2]


def test_gt_without_overlap_gets_no_anchor_and_keeps_gt0_match():
    gt = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.0, 0.8, 0.1, 0.9]])  # GT 1 overlaps no anchor
    for variant in ("st20", "st25"):
        assert match_anchors(gt, _anchors(), variant=variant).tolist() == [-1, 0, -1, -1]


def test_st20_exact_reproduces_st20_handing_anchor_0_to_the_last_gt_without_overlap():
    # ST 2.0: the zero-overlap GT's bipartite pick is (GT 0, anchor 0), overwriting GT 0's anchor 1;
    # GT 1's never-set match is ST's initial anchor 0, and the later write wins.
    gt = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.0, 0.8, 0.1, 0.9]])
    assert match_anchors(gt, _anchors(), variant="st20_exact").tolist() == [1, 0, -1, -1]


def test_exact_iou_ties_go_to_the_first_anchor_and_the_first_gt():
    anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.0, 0.5, 0.5]], dtype=torch.float64)
    gt = torch.tensor([[0.25, 0.0, 0.75, 0.5], [0.25, 0.0, 0.75, 0.5]], dtype=torch.float64)  # IoU 1/3 with 0 and 1
    # bipartite: GT 0 takes anchor 0 (first index), GT 1 the next best, anchor 1 (first of 1 and 2)
    assert match_anchors(gt, anchors, iou_threshold=0.3).tolist() == [0, 1, 0]


def test_image_without_gt_is_all_background():
    assert (match_anchors(torch.zeros(0, 4), _anchors()) == -1).all()


# ---------------------------------------------------------------------------------------- loss
def test_focal_loss_uses_st_alpha_one_gamma_quarter():
    probs = torch.tensor([[[0.2, 0.8], [0.9, 0.1]]])
    labels = torch.tensor([[1, 0]])
    got = softmax_focal_loss(probs, labels)
    want = [-(0.2 ** 0.25) * math.log(0.8), -(0.1 ** 0.25) * math.log(0.9)]
    assert torch.allclose(got[0], torch.tensor(want), atol=1e-6)


def test_probabilities_are_clipped_like_st_so_a_zero_probability_is_finite():
    loss = softmax_focal_loss(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[1]]))
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(-math.log(1e-7), rel=1e-4)


def test_box_loss_is_smooth_l1_with_sigma_half_over_batch_positives():
    targets = torch.zeros(2, 2, 4)
    targets[:, 1] = 9.0  # background anchors: never in the box loss
    labels = torch.tensor([[1, 0], [1, 0]])
    probs = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).expand(2, 2, 2)
    offsets = torch.zeros(2, 2, 4)
    offsets[0, 0, 0] = 2.0  # 0.125 * d^2 = 0.5
    offsets[1, 0, 1] = -6.0  # |d| - 2 = 4
    out = ssd_loss(probs, offsets, labels, targets)
    assert out.num_positives == 2
    assert out.localization.item() == pytest.approx((0.5 + 4.0) / 2)
    assert out.classification.item() == pytest.approx(4 * -((1e-7) ** 0.25) * math.log(1 - 1e-7) / 2, abs=1e-6)


def test_hard_negative_mining_keeps_three_negatives_per_positive():
    probs = torch.full((1, 10, 2), 0.5)
    probs[0, :, 0] = torch.linspace(0.05, 0.95, 10)  # background prob: low = hard negative
    probs[0, :, 1] = 1 - probs[0, :, 0]
    labels = torch.zeros(1, 10, dtype=torch.long)
    labels[0, 9] = 1
    kept = hard_negative_mining_loss(probs, labels) > 0
    assert kept[0].nonzero().flatten().tolist() == [0, 1, 2, 9]


def test_unknown_classification_loss_is_rejected():
    with pytest.raises(ValueError, match="hard_negative_mining"):
        ssd_loss(torch.rand(1, 2, 2), torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long),
                 torch.zeros(1, 2, 4), classification="ohem")


# ---------------------------------------------------------------------------------- optimizer
def test_l2_is_keras_loss_term_on_st_added_kernels_only():
    module = SSDLightningModule(input_size=192, l2=5e-4)
    kernels = st_added_kernels(module.model)
    assert len(kernels) == 19  # ST's 19 regularized kernels at 192 (26 at 224/256)
    assert len(st_added_kernels(SSDLightningModule(input_size=224).model)) == 26
    assert not {id(k) for k in kernels} & {id(p) for p in module.model.backbone.parameters()}
    reg = l2_penalty(kernels, 5e-4)
    assert reg.detach().item() == pytest.approx(5e-4 * sum(float((k.detach().double() ** 2).sum()) for k in kernels), rel=1e-6)
    reg.backward()
    assert all(torch.allclose(k.grad, 1e-3 * k.detach()) for k in kernels)
    assert all(p.grad is None for p in module.model.backbone.parameters())
    opt = module.configure_optimizers()["optimizer"]
    assert isinstance(opt, KerasAdam) and all(g["weight_decay"] == 0.0 for g in opt.param_groups)


def test_keras_adam_adds_epsilon_to_sqrt_v_not_to_bias_corrected_sqrt_v():
    w0, grads, lr, eps = 0.5, [3e-6, -1e-6, 4e-6], 1e-3, 1e-7
    w = torch.tensor([w0], dtype=torch.float64, requires_grad=True)
    opt = KerasAdam([w], lr=lr, keras_eps=eps)
    m = v = 0.0
    expected = w0
    for t, g in enumerate(grads, start=1):  # Keras OptimizerV2 Adam, written out
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        expected -= lr * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (math.sqrt(v) + eps)
        w.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        assert w.item() == pytest.approx(expected, rel=0, abs=1e-15)
    plain = torch.tensor([w0], dtype=torch.float64, requires_grad=True)
    plain.grad = torch.tensor([grads[0]], dtype=torch.float64)
    torch.optim.Adam([plain], lr=lr, eps=eps).step()  # PyTorch's placement of the same epsilon
    keras_first_step = lr * grads[0] / (grads[0] + eps / math.sqrt(1 - 0.999))  # 0.49 lr
    assert abs(w0 - plain.item()) > 1.9 * keras_first_step  # 0.97 lr: twice Keras' step


# ------------------------------------------------------------------------------- augmentation
def _sample(aug, seed=0):
    torch.manual_seed(seed)
    return DetectionSamples(SyntheticPersons(4, seed=3), 192, "bilinear", aug)


def test_horizontal_flip_mirrors_the_boxes():
    plain, flipped = _sample(NO_AUGMENTATION)[0], _sample(Augmentation(**{
        **NO_AUGMENTATION.__dict__, "horizontal_flip": 1.0}))[0]
    assert torch.allclose(flipped["image"], plain["image"].flip(-1), atol=1e-6)
    mirrored = plain["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([1, 0, 1, 0])
    assert torch.allclose(flipped["boxes"], mirrored, atol=1e-5)


def test_no_augmentation_gives_the_evaluation_pixels_and_boxes():
    ds = SyntheticPersons(2, seed=3)
    sample = DetectionSamples(ds, 192, "nearest", None)[1]
    from ssd_mnv1.preprocess import preprocess

    image, rec = ds[1]
    assert torch.equal(sample["image"], preprocess(image, 192))
    assert np.allclose(sample["boxes"].numpy(), rec.boxes)


def test_boxes_pushed_out_of_the_image_are_dropped_and_counted():
    # min_box_size 1 px: ST's rule (0) keeps sub-pixel slivers, which this test does not want to meet
    aug = Augmentation(**{**NO_AUGMENTATION.__dict__, "affine_probability": 1.0, "rotation": 0.0,
                          "shear": 0.0, "scale": (1.0, 1.0), "translation": 0.49, "min_box_size": 1.0})
    total_dropped = 0
    for seed in range(12):
        s = _sample(aug, seed)[seed % 4]
        total_dropped += s["dropped"]
        boxes = s["boxes"]
        assert ((boxes >= 0) & (boxes <= 1)).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) * 192 >= 1).all()
        assert len(s["labels"]) == len(boxes)
    assert total_dropped > 0


def test_st_default_augmentation_keeps_boxes_valid_and_images_in_range():
    for seed in range(6):
        s = _sample(Augmentation(), seed)[seed % 4]
        assert s["image"].shape == (3, 192, 192)
        assert s["image"].min() >= -1 and s["image"].max() <= 1
        assert ((s["boxes"] >= 0) & (s["boxes"] <= 1)).all()


@pytest.mark.parametrize("field, value", [("vertical_flip", 1.5), ("scale", (1.2, 0.5)), ("blur_sigma", -1.0),
                                          ("crop_max_fraction", 0.6)])
def test_bad_augmentation_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"augmentation.{field}"):
        Augmentation(**{field: value})


def test_collate_drops_images_left_without_boxes_and_counts_them():
    samples = [{"image": torch.zeros(3, 4, 4), "boxes": torch.zeros(n, 4), "labels": torch.ones(n, dtype=torch.long),
                "index": i, "file": f"f{i}", "dropped": 1} for i, n in enumerate([2, 0, 1])]
    batch = DetectionCollate(drop_empty=True)(samples)
    assert batch["images"].shape[0] == 2 and batch["indices"].tolist() == [0, 2]
    assert batch["images_dropped"].item() == 1 and batch["boxes_dropped"].item() == 3
    assert DetectionCollate(drop_empty=False)(samples)["images"].shape[0] == 3


# ------------------------------------------------------------------------------------ metrics
def test_rank_states_merge_to_the_single_process_evaluator_despite_padding():
    rng = np.random.default_rng(0)
    images = []
    for i in range(7):
        gt = rng.uniform(0, 0.5, (2, 2))
        gt = np.concatenate([gt, gt + 0.3], 1)
        det = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
        images.append((i, det, rng.uniform(0, 1, 2).round(1), gt))  # rounded scores: ties happen
    def add(evaluator, i):
        _, det, scores, gt = images[i]
        dets = Detections(torch.as_tensor(det), torch.as_tensor(scores), torch.ones(2, dtype=torch.long))
        evaluator.update([dets], [gt], [[1, 1]], [i])

    single = STAPEvaluator(192)
    ranks = [STAPEvaluator(192), STAPEvaluator(192)]
    for i in range(len(images)):
        add(single, i)
    for r, idx in enumerate([[0, 2, 4, 6], [1, 3, 5, 0]]):  # DistributedSampler pads rank 1 with image 0
        for i in idx:
            add(ranks[r], i)
    ranks[1].merge_state(ranks[0])
    merged = ranks[1].compute()
    assert merged.ap == single.compute().ap
    assert merged.num_images == 7
