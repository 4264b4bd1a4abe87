"""Pins the imgaug (ST 2.0) behaviours of the training augmentation that bench/augment_parity.py
measures against ST's own code: no ST code or imgaug needed here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import SHARED
from torchvision import tv_tensors

from ssd_mnv1.training import (NO_AUGMENTATION, Augmentation, DetectionCollate, DetectionDataModule,
                               DetectionSamples, SyntheticPersons)
from ssd_mnv1.training import augment as A

#: Real training images where ../shared has them (SSD_MNV1_SHARED overrides); generated ones otherwise.
COCO = SHARED / "data" / "coco2017_person_train"


def _dataset(n=4):
    if COCO.exists():
        from ssd_mnv1.data import open_dataset

        return open_dataset(COCO)
    return SyntheticPersons(n, seed=3)


def _sample(img, boxes):
    h, w = img.shape[-2:]
    return {"image": tv_tensors.Image(img),
            "boxes": tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32), format="XYXY",
                                              canvas_size=(h, w)),
            "labels": torch.ones(len(boxes), dtype=torch.long)}


# ------------------------------------------------------------------------------------ affine
def test_one_shear_angle_is_used_on_both_axes():
    s = 12.0
    t = math.tan(math.radians(s))
    m = A.st_affine_matrix(1.0, 1.0, 0.0, s, 0.0, 0.0, 100, 100)
    # imgaug 0.4.0: ShearX(-tan s) @ ShearY(+tan s) with the same s
    assert torch.allclose(m[:2, :2], torch.tensor([[1 - t * t, -t], [t, 1.0]], dtype=torch.float64))
    assert torch.allclose(m[:2, :2] @ torch.tensor([50.0, 50.0], dtype=torch.float64) + m[:2, 2],
                          torch.tensor([50.0, 50.0], dtype=torch.float64))  # about the centre


def test_affine_scale_x_and_y_are_drawn_independently():
    torch.manual_seed(0)
    op = A.RandomAffineST(30.0, 15.0, 0.1, (0.5, 1.1))
    img = tv_tensors.Image(torch.zeros(3, 8, 8, dtype=torch.uint8))
    p = [op.make_params([img])["params"] for _ in range(2000)]
    sx, sy = np.array([q["scale_x"] for q in p]), np.array([q["scale_y"] for q in p])
    assert sx.min() >= 0.5 and sx.max() <= 1.1 and sy.min() >= 0.5 and sy.max() <= 1.1
    assert abs(np.corrcoef(sx, sy)[0, 1]) < 0.1 and np.mean(np.abs(sx - sy)) > 0.1
    shear = np.array([q["shear"] for q in p])
    assert shear.min() >= -15 and shear.max() <= 15 and shear.std() > 7


def test_affine_moves_box_corners_by_the_matrix_without_clamping():
    torch.manual_seed(1)
    op = A.RandomAffineST(30.0, 15.0, 0.1, (0.5, 1.1))
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)
    params = op.make_params([tv_tensors.Image(img)])
    boxes = torch.tensor([[10.0, 12.0, 30.0, 40.0], [-20.0, -20.0, -10.0, -10.0]], dtype=torch.float64)
    out = op.boxes(boxes, params, (64, 64))
    m = params["matrix"]
    corners = torch.tensor([[10.0, 12.0], [30.0, 12.0], [10.0, 40.0], [30.0, 40.0]], dtype=torch.float64)
    moved = corners @ m[:2, :2].T + m[:2, 2]
    assert torch.allclose(out[0], torch.cat([moved.amin(0), moved.amax(0)]))
    assert (out[1] < 0).any()  # a box outside stays outside (no clamping between ops)


def test_affine_fill_is_drawn_per_channel_and_interpolation_is_nearest_or_linear():
    torch.manual_seed(2)
    op = A.RandomAffineST(30.0, 15.0, 0.1, (0.5, 1.1))
    img = tv_tensors.Image(torch.zeros(3, 8, 8, dtype=torch.uint8))
    p = [op.make_params([img]) for _ in range(500)]
    fills = np.array([q["fill"] for q in p])
    assert (fills == np.floor(fills)).all() and fills.min() >= 0 and fills.max() <= 255
    assert np.mean(fills.min(1) == fills.max(1)) < 0.05
    assert 0.4 < np.mean([q["nearest"] for q in p]) < 0.6
    # the border takes the fill, per channel
    warped = A.warp_affine(torch.zeros(3, 32, 32, dtype=torch.uint8),
                           A.st_affine_matrix(0.5, 0.5, 0, 0, 0, 0, 32, 32), True, [10, 20, 30])
    assert warped[:, 0, 0].tolist() == [10, 20, 30] and warped[:, 16, 16].tolist() == [0, 0, 0]


# -------------------------------------------------------------------------------------- crop
def test_crop_is_resized_back_with_cv2_area_interpolation():
    # cv2.resize([0, 3, 6], (4, 1), INTER_AREA) == [0, 2, 4, 6]; an integer upscale repeats pixels
    row = torch.tensor([[[0, 3, 6]]], dtype=torch.uint8)
    assert A.resize_area_up(row, (1, 4)).flatten().tolist() == [0, 2, 4, 6]
    img = torch.arange(16, dtype=torch.uint8).reshape(1, 4, 4) * 10
    up = A.resize_area_up(img, (8, 8))
    assert torch.equal(up, img.repeat_interleave(2, 1).repeat_interleave(2, 2))


def test_crop_sides_are_independent_and_boxes_follow():
    torch.manual_seed(3)
    op = A.RandomCropSides(0.25)
    img = tv_tensors.Image(torch.zeros(3, 100, 100, dtype=torch.uint8))
    p = [op.make_params([img]) for _ in range(1000)]
    tops = np.array([q["top"] for q in p])
    lefts = np.array([q["left"] for q in p])
    assert tops.min() == 0 and tops.max() == 25 and abs(np.corrcoef(tops, lefts)[0, 1]) < 0.1
    q = {"top": 10, "left": 20, "height": 80, "width": 50, "size": (100, 100)}
    out = op.boxes(torch.tensor([[20.0, 10.0, 70.0, 90.0]], dtype=torch.float64), q, (100, 100))
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 100.0, 100.0]], dtype=torch.float64))


# ------------------------------------------------------------------------------- photometric
def test_contrast_pivots_on_127_and_multiply_truncates_like_imgaug_luts():
    img = torch.tensor([200, 127, 20], dtype=torch.uint8).reshape(3, 1, 1).repeat(1, 2, 2)
    out = A.RandomLinearContrast((1.5, 1.5)).image(img, {"gain": 1.5})
    assert out[:, 0, 0].tolist() == [236, 127, 0]  # floor(127 + 1.5 (v - 127)), clipped
    out = A.RandomMultiply((1.0, 1.0)).image(img, {"gain": 1.01})
    assert out[:, 0, 0].tolist() == [202, 128, 20]  # floor(v * 1.01)


def test_noise_is_shared_by_the_channels_and_add_is_per_channel_half_the_time():
    torch.manual_seed(4)
    img = torch.full((3, 16, 16), 128, dtype=torch.uint8)
    noisy = A.RandomGaussianNoise(12.75).image(img, {"std": 10.0})
    assert torch.equal(noisy[0], noisy[1]) and torch.equal(noisy[1], noisy[2]) and noisy.float().std() > 5
    add = A.RandomAdd(50.0, 0.5)
    per_channel = [len(add.make_params([tv_tensors.Image(img)])["offset"]) == 3 for _ in range(400)]
    assert 0.4 < np.mean(per_channel) < 0.6


def test_blur_kernel_size_follows_imgaug():
    assert [A.st_blur_kernel_size(s) for s in (0.1, 1.0, 1.6, 2.0, 2.9)] == [5, 5, 5, 7, 9]
    img = torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8)
    assert torch.equal(A.RandomGaussianBlur(3.0).image(img, {"sigma": 5e-4}), img)


# ------------------------------------------------------------------------- boxes and batches
def test_boxes_fully_outside_are_removed_and_partial_ones_clipped():
    boxes = torch.tensor([[-10.0, 5.0, 20.0, 30.0], [-30.0, 5.0, -1.0, 30.0], [70.0, 60.0, 80.0, 90.0],
                          [90.0, 10.0, 99.9, 20.0]])
    keep, clipped = A.finish_boxes(boxes, 64, 64)
    assert keep.tolist() == [True, False, False, False]
    assert clipped[0].tolist() == [0.0, 5.0, 20.0, 30.0]
    sliver = torch.tensor([[-10.0, 5.0, 0.5, 30.0]])
    assert A.finish_boxes(sliver, 64, 64)[0].tolist() == [True]  # ST keeps sub-pixel leftovers
    assert A.finish_boxes(sliver, 64, 64, min_size=1.0)[0].tolist() == [False]


def test_images_left_without_boxes_are_dropped_from_the_batch():
    ds = _dataset()
    still = Augmentation(**{**NO_AUGMENTATION.__dict__, "affine_probability": 1.0, "rotation": 0.0, "shear": 0.0,
                            "scale": (1.0, 1.0), "translation": 0.0})
    samples = DetectionSamples(ds, 96, "bilinear", still)
    kept = [samples[i] for i in range(3)]
    assert all(len(s["labels"]) == len(ds[i][1].labels) > 0 for i, s in enumerate(kept))
    affine = samples.transforms.ops[0].transforms[0]
    draw = affine.make_params

    def far_away(flat_inputs):  # a translation of ten image sizes: every box ends up outside
        params = draw(flat_inputs)
        params["matrix"][0, 2] += 960.0
        return params

    affine.make_params = far_away
    gone = samples[1]
    assert len(gone["labels"]) == 0 and gone["dropped"] == len(ds[1][1].labels)
    batch = DetectionCollate(drop_empty=True)(kept + [gone])
    assert batch["images"].shape[0] == 3 and batch["images_dropped"].item() == 1


def test_one_op_order_per_batch():
    sampler = A.OrderedBatchSampler(range(10), batch_size=4, drop_last=True)
    torch.manual_seed(6)
    batches = list(sampler)
    assert len(batches) == 2 and all(len({seed for _, seed in b}) == 1 for b in batches)
    assert [i for i, _ in batches[0]] == [0, 1, 2, 3]
    pipeline = A.build_transforms(Augmentation())
    seed = batches[0][0][1]
    assert pipeline.order(seed) == pipeline.order(seed) == A.order_from_seed(seed, 9)
    assert sorted(pipeline.order(seed)) == list(range(9))
    assert len({tuple(pipeline.order(s)) for s in range(50)}) > 40
    assert A.build_transforms(Augmentation(random_order=False)).order(seed) == list(range(9))


def test_train_loader_tags_batches_with_one_order_and_keeps_the_batch_contract():
    dm = DetectionDataModule(synthetic_train=8, synthetic_val=2, input_size=96, batch_size=4, num_workers=0,
                             pin_memory=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, A.OrderedBatchSampler)
    seen = []
    samples = loader.dataset
    real = samples.transforms

    class Spy:
        def __call__(self, sample, order_seed=None):
            seen.append(order_seed)
            return real(sample, order_seed)

    samples.transforms = Spy()
    batch = next(iter(loader))
    assert len(seen) == 4 and len(set(seen)) == 1 and seen[0] is not None
    assert set(batch) == {"images", "boxes", "labels", "indices", "files", "boxes_dropped", "images_dropped"}
    assert batch["images"].dtype == torch.float32 and batch["images"].shape[1:] == (3, 96, 96)


def test_st_augmentation_on_real_images_keeps_boxes_and_pixels_valid():
    ds = _dataset()
    samples = DetectionSamples(ds, 128, "bilinear", Augmentation())
    torch.manual_seed(7)
    for i in range(6):
        s = samples[(i % len(ds), 1234)]
        assert s["image"].shape == (3, 128, 128)
        assert s["image"].min() >= -1 and s["image"].max() <= 1
        # uint8 between ops: the pixels are k/127.5 - 1
        k = (s["image"] + 1) * 127.5
        assert torch.allclose(k, k.round(), atol=1e-3)
        assert ((s["boxes"] >= 0) & (s["boxes"] <= 1)).all() and len(s["boxes"]) == len(s["labels"])
        assert (s["boxes"][:, 2:] >= s["boxes"][:, :2]).all()


def test_augmentation_config_fields_still_validate():
    assert Augmentation(**{}).min_box_size == 0.0
    with pytest.raises(ValueError, match="augmentation.min_box_size"):
        Augmentation(min_box_size=-1.0)
    with pytest.raises(ValueError, match="augmentation.shear"):
        Augmentation(shear=95.0)
