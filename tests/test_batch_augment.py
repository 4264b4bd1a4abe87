"""BatchAugmentation against the per-image ops of ssd_mnv1.training.augment, fed the same draws.

Every comparison is exact: on the CPU the batched ops give the same uint8 pixels and the same
float32 boxes as the per-image ops (measured max difference 0 for every op and for the pipeline).
"""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from ssd_mnv1.training.augment import NO_AUGMENTATION, Augmentation, build_transforms, finish_boxes
from ssd_mnv1.training.batch_augment import GEOMETRIC, BatchAugmentation, BatchParams
from ssd_mnv1.training.synthetic import SyntheticPersons

#: Higher probabilities than ST's, so that a small batch has images with and without each op.
BUSY = Augmentation(horizontal_flip=0.5, vertical_flip=0.5, crop_probability=0.6, affine_probability=0.7)
NOISE_SEED = 1000  # image i's noise field is torch.randn(1, H, W) after torch.manual_seed(NOISE_SEED + i)
EDGE_BOXES = torch.tensor([[0.0, 0.0, 0.04, 0.05], [0.96, 0.2, 1.0, 0.3], [0.3, 0.97, 0.4, 1.0]])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: on a shared 2-core machine extra intra-op threads only add spin-waits (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _synthetic(n: int, size: int) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Person-like images, their boxes plus three thin boxes on the borders (that crops remove)."""
    ds = SyntheticPersons(n, seed=5, size=size)
    images = torch.stack([torch.tensor(ds[i][0]).permute(2, 0, 1) for i in range(n)])
    boxes = [torch.cat([torch.from_numpy(ds.records[i].boxes), EDGE_BOXES]) for i in range(n)]
    return images, boxes, [torch.arange(len(b), dtype=torch.int64) + 1 for b in boxes]


def _random(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _params(aug: BatchAugmentation, n: int, size: int, seed: int) -> BatchParams:
    """Draws for the batch, with the noise field the per-image noise op draws after NOISE_SEED + i."""
    params = aug.sample_params(n, size, size, torch.Generator().manual_seed(seed))
    if "noise" in params.draws:
        fields = []
        for i in range(n):
            torch.manual_seed(NOISE_SEED + i)
            fields.append(torch.randn(1, size, size))
        params.draws["noise"]["field"] = torch.stack(fields)
    return params


def _per_image(aug: BatchAugmentation, images, boxes, labels, params: BatchParams, order) -> dict:
    """What STAugmentation + DetectionSamples compute per image for these draws (the reference)."""
    h, w = params.size
    out = {"images": [], "boxes": [], "labels": [], "boxes_dropped": 0}
    for i in range(len(images)):
        img = tv_tensors.Image(images[i])
        bb = tv_tensors.BoundingBoxes(boxes[i] * h, format="XYXY", canvas_size=(h, w))
        p = params.for_image(i)
        for k in order:
            kind, op = aug.kinds[k], aug.image_ops[k]
            if p[kind] is None:
                continue
            if kind == "noise":
                torch.manual_seed(NOISE_SEED + i)
            img = op.transform(img, p[kind])
            if kind in GEOMETRIC:
                bb = op.transform(bb, p[kind])
        keep, clipped = finish_boxes(bb.as_subclass(torch.Tensor).float(), h, w, aug.cfg.min_box_size)
        out["images"].append(img.as_subclass(torch.Tensor).float() / 255.0 * 2.0 - 1.0)
        out["boxes"].append(clipped[keep].float() / h)
        out["labels"].append(labels[i][keep])
        out["boxes_dropped"] += int((~keep).sum())
    out["images"] = torch.stack(out["images"])
    return out


def _one_op_per_image(aug: BatchAugmentation, k: int, images: torch.Tensor, params: BatchParams) -> torch.Tensor:
    kind, op = aug.kinds[k], aug.image_ops[k]
    out = []
    for i, img in enumerate(images):
        p = params.for_image(i)[kind]
        if kind == "noise":
            torch.manual_seed(NOISE_SEED + i)
        out.append(img if p is None else op.transform(tv_tensors.Image(img), p).as_subclass(torch.Tensor))
    return torch.stack(out)


# ------------------------------------------------------------------------- per-op equivalence
@pytest.mark.parametrize("kind", ["hflip", "vflip", "crop", "affine", "multiply", "blur", "noise", "contrast", "add"])
def test_each_op_is_bit_identical_to_the_per_image_op(kind):
    aug = BatchAugmentation(BUSY)
    k = aug.kinds.index(kind)
    for images, seed in ((_random(6, 64), 1), (_synthetic(4, 96)[0], 2)):
        params = _params(aug, len(images), images.shape[-1], seed)
        d = params.draws[kind]
        if "apply" in d:  # the draw exercises both branches
            assert 0 < int(d["apply"].sum()) < len(images), kind
        batched = aug.augment_pixels(images, params, [k])
        reference = _one_op_per_image(aug, k, images, params)
        assert batched.dtype == torch.uint8
        assert torch.equal(batched, reference), (kind, int((batched.int() - reference.int()).abs().max()))
        assert not torch.equal(batched, images)  # the op did something


def test_affine_covers_both_interpolations_and_the_boxes_follow_the_per_image_op():
    aug = BatchAugmentation(Augmentation(affine_probability=1.0))
    k = aug.kinds.index("affine")
    images, boxes, labels = _synthetic(6, 96)
    params = _params(aug, 6, 96, 2)
    nearest = params.draws["affine"]["nearest"]
    assert 0 < int(nearest.sum()) < 6
    assert torch.equal(aug.augment_pixels(images, params, [k]), _one_op_per_image(aug, k, images, params))
    got, want = aug.apply(images, boxes, labels, params, [k]), _per_image(aug, images, boxes, labels, params, [k])
    for a, b in zip(got["boxes"], want["boxes"]):
        assert a.shape == b.shape and torch.equal(a, b)


def test_blur_groups_kernel_sizes_and_skips_tiny_sigmas():
    aug = BatchAugmentation(Augmentation())
    k = aug.kinds.index("blur")
    images = _random(5, 48, seed=4)
    params = _params(aug, 5, 48, 0)
    params.draws["blur"]["sigma"] = torch.tensor([0.0, 5e-4, 0.9, 2.0, 2.99], dtype=torch.float64)  # k 0 0 5 7 9
    batched = aug.augment_pixels(images, params, [k])
    assert torch.equal(batched[:2], images[:2])
    assert torch.equal(batched, _one_op_per_image(aug, k, images, params))


# ------------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("order_seed, cpu_chunk", [(0, 4), (7, 0)])  # chunks of 4 + 2 images / whole batch
def test_pipeline_matches_per_image_augmentation_for_the_same_draws(order_seed, cpu_chunk):
    aug = BatchAugmentation(BUSY, cpu_chunk=cpu_chunk)
    images, boxes, labels = _synthetic(6, 96)
    params = _params(aug, 6, 96, 11)
    order = aug.order(order_seed)
    assert sorted(order) == list(range(len(aug.ops))) and order != list(range(len(aug.ops)))
    got = aug.apply(images, boxes, labels, params, order)
    want = _per_image(aug, images, boxes, labels, params, order)
    assert torch.equal(got["images"], want["images"])
    assert want["boxes_dropped"] > 0 and int(got["boxes_dropped"]) == want["boxes_dropped"]
    for a, b, la, lb in zip(got["boxes"], want["boxes"], got["labels"], want["labels"]):
        assert a.shape == b.shape and torch.equal(a, b)  # bit-identical (the brief asks 1e-4)
        assert torch.equal(la, lb)


def test_cpu_chunks_do_not_change_the_result():
    images = _random(11, 48, seed=9)
    params = _params(BatchAugmentation(BUSY), 11, 48, 5)
    order = BatchAugmentation(BUSY).order(3)
    whole = BatchAugmentation(BUSY, cpu_chunk=0).augment_pixels(images, params, order)
    for chunk in (1, 3, 8):
        assert torch.equal(BatchAugmentation(BUSY, cpu_chunk=chunk).augment_pixels(images, params, order), whole)


def test_order_is_the_per_image_pipelines_order_for_a_seed():
    aug, per_image = BatchAugmentation(Augmentation()), build_transforms(Augmentation())
    assert aug.kinds == ["hflip", "vflip", "crop", "affine", "multiply", "blur", "noise", "contrast", "add"]
    for seed in (0, 1, 12345):
        assert aug.order(seed) == per_image.order(seed)
    assert BatchAugmentation(Augmentation(random_order=False)).order() == list(range(9))


def test_outputs_have_the_collate_layout_dtype_and_range():
    aug = BatchAugmentation(Augmentation())
    images, boxes, labels = _synthetic(5, 64)
    out = aug(images, boxes, labels, generator=torch.Generator().manual_seed(0))
    assert out["images"].shape == (5, 3, 64, 64) and out["images"].dtype == torch.float32
    assert out["images"].min() >= -1.0 and out["images"].max() <= 1.0
    # exactly the uint8 grid of DetectionSamples: x/255*2-1
    levels = ((out["images"] + 1.0) / 2.0 * 255.0).round()
    assert torch.equal(levels.to(torch.uint8).float() / 255.0 * 2.0 - 1.0, out["images"])
    assert len(out["boxes"]) == len(out["labels"]) == 5
    for b, lab in zip(out["boxes"], out["labels"]):
        assert b.dtype == torch.float32 and b.shape == (len(lab), 4) and lab.dtype == torch.int64
        assert (b >= 0).all() and (b <= 1).all() and (b[:, 2:] > b[:, :2]).all()
    assert out["boxes_dropped"].dtype == torch.int64
    assert int(out["boxes_dropped"]) == sum(map(len, boxes)) - sum(map(len, out["boxes"]))


def test_no_augmentation_is_only_the_normalization():
    aug = BatchAugmentation(NO_AUGMENTATION)
    assert aug.ops == []
    images, boxes, labels = _synthetic(3, 64)
    out = aug(images, boxes, labels)
    assert torch.equal(out["images"], images.float() / 255.0 * 2.0 - 1.0)
    for a, b in zip(out["boxes"], boxes):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_seeded_generator_makes_the_batch_reproducible():
    aug = BatchAugmentation(Augmentation())
    images, boxes, labels = _synthetic(4, 64)

    def run(seed):
        return aug(images, boxes, labels, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a["images"], b["images"]) and not torch.equal(a["images"], c["images"])
    assert all(torch.equal(x, y) for x, y in zip(a["boxes"], b["boxes"]))


def test_rejects_float_images_and_mismatched_params():
    aug = BatchAugmentation(Augmentation())
    params = aug.sample_params(2, 32, 32)
    with pytest.raises(TypeError, match="uint8"):
        aug.augment_pixels(torch.zeros(2, 3, 32, 32), params, [0])
    with pytest.raises(ValueError, match="drawn for"):
        aug.augment_pixels(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), params, [0])
    with pytest.raises(ValueError, match="drawn for"):
        aug.augment_pixels(torch.zeros(3, 3, 32, 32, dtype=torch.uint8), params, [0])


# --------------------------------------------------------------------------- distributions
def test_draws_follow_the_per_image_distributions():
    cfg = Augmentation()
    n, size = 4000, 100
    d = BatchAugmentation(cfg).sample_params(n, size, size, torch.Generator().manual_seed(0)).draws

    def rate(x, p):  # within 4.5 standard errors
        assert abs(x.double().mean().item() - p) < 4.5 * (p * (1 - p) / n) ** 0.5 + 1e-9

    rate(d["hflip"]["apply"], cfg.horizontal_flip)
    rate(d["vflip"]["apply"], cfg.vertical_flip)
    rate(d["crop"]["apply"], cfg.crop_probability)
    rate(d["affine"]["apply"], cfg.affine_probability)
    rate(d["affine"]["nearest"], 0.5)
    rate(d["add"]["per_channel"], cfg.add_per_channel)
    # crop sides: U(0, 25 %) of the size rounded -> mean ~12.5 px kept per side; sizes in range
    crop = d["crop"]
    assert crop["top"].min() >= 0 and crop["top"].max() <= round(cfg.crop_max_fraction * size)
    assert abs(crop["top"].double().mean().item() - cfg.crop_max_fraction * size / 2) < 0.5
    assert (crop["height"] >= size - 2 * round(cfg.crop_max_fraction * size)).all()
    per_image = build_transforms(cfg).ops[2].transforms[0]
    img = tv_tensors.Image(torch.zeros(3, size, size, dtype=torch.uint8))
    torch.manual_seed(0)
    ref_h = torch.tensor([per_image.make_params([img])["height"] for _ in range(2000)], dtype=torch.float64)
    assert abs(crop["height"].double().mean() - ref_h.mean()) < 4.5 * ref_h.std() * (1 / n + 1 / 2000) ** 0.5
    for kind, lo, hi in (("multiply", *cfg.brightness), ("contrast", *cfg.contrast), ("blur", 0, cfg.blur_sigma),
                         ("noise", 0, cfg.noise * 255)):
        x = next(iter(d[kind].values()))
        assert x.min() >= lo and x.max() <= hi and abs(x.mean().item() - (lo + hi) / 2) < 0.03 * (hi - lo)
    fill = d["affine"]["fill"]
    assert fill.min() == 0 and fill.max() == 254 and torch.equal(fill, fill.floor())
    off = d["add"]["offset"]
    assert off.abs().max() <= cfg.add and torch.equal(off, off.round())
    same = (off == off[:, :1]).all(dim=1)
    assert same[~d["add"]["per_channel"]].all() and not same[d["add"]["per_channel"]].all()
    applied = d["affine"]["matrix"][d["affine"]["apply"]]
    det = torch.linalg.det(applied[:, :2, :2])  # det = sx * sy (rotation and the two shears have det 1)
    assert det.min() >= cfg.scale[0] ** 2 - 1e-9 and det.max() <= cfg.scale[1] ** 2 + 1e-9
    assert torch.equal(d["affine"]["matrix"][~d["affine"]["apply"]], torch.eye(3, dtype=torch.float64).expand(
        int((~d["affine"]["apply"]).sum()), 3, 3))


# ----------------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_matches_the_cpu_batch():
    aug = BatchAugmentation(BUSY)
    images, boxes, labels = _synthetic(6, 96)
    params = _params(aug, 6, 96, 11)
    order = aug.order(0)
    cpu = aug.apply(images, boxes, labels, params, order)
    params.draws["noise"]["field"] = params.draws["noise"]["field"].cuda()
    gpu = aug.apply(images.cuda(), [b.cuda() for b in boxes], [lab.cuda() for lab in labels], params, order)
    diff = ((gpu["images"].cpu() - cpu["images"]) * 127.5).abs().round()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # last-bit float differences at ties
    for a, b in zip(gpu["boxes"], cpu["boxes"]):
        assert a.is_cuda and torch.equal(a.cpu(), b)


def test_data_module_augments_uint8_training_batches_on_the_device():
    """``augment_on: device``: the loader yields resized uint8 images; the batch is augmented after the
    transfer (here on the CPU) into the model's float input, boxes kept valid and empty images dropped."""
    from ssd_mnv1.training import DetectionDataModule

    dm = DetectionDataModule(synthetic_train=8, synthetic_val=2, input_size=96, batch_size=8, num_workers=0,
                             augment_on="device", cache=False)
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    assert raw["images"].dtype == torch.uint8 and raw["images"].shape == (8, 3, 96, 96)
    torch.manual_seed(0)
    out = dm.on_after_batch_transfer(raw, 0)
    assert out["images"].dtype == torch.float32 and out["images"].shape[1:] == (3, 96, 96)
    assert out["images"].min() >= -1 and out["images"].max() <= 1
    assert len(out["boxes"]) == len(out["labels"]) == len(out["images"]) == len(out["indices"])
    assert all(len(b) for b in out["boxes"]) and all(((b >= 0) & (b <= 1)).all() for b in out["boxes"])
    assert int(out["images_dropped"]) == 8 - len(out["images"])
    with pytest.raises(ValueError, match="data.augment_on"):
        DetectionDataModule(synthetic_train=8, synthetic_val=2, augment_on="gpu")
