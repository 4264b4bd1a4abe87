"""The fast evaluation paths give exactly what the straightforward code gave.

The batched ST post-processing, the loop-free ST-AP matching and the pipelined evaluation loop are
checked against reference implementations kept here: the per-image / per-detection code they
replaced. Random inputs are quantized so that scores tie, which is where order matters.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ssd_mnv1.box_coder import decode
from ssd_mnv1.metrics import STAPEvaluator, average_precision, coco_metrics
from ssd_mnv1.metrics.st_ap import iou_plus_one, rasterize
from ssd_mnv1.postprocess import VARIANTS, Detections, _nms_in_order, postprocess

ST_VARIANTS = ("st20", "st25")


# ------------------------------------------------------------------------------ reference code


def _reference_st_postprocess(scores, offsets, anchors, variant: str) -> list[Detections]:
    """ST post-processing one image and one class at a time (the code the batched path replaced)."""
    spec = VARIANTS[variant]
    threshold, iou_threshold, cap = spec.score_threshold, spec.iou_threshold, spec.max_detections
    if spec.suppress_at_threshold:
        iou_threshold = float(np.nextafter(iou_threshold, 0.0))
    boxes_all = decode(torch.from_numpy(offsets), torch.from_numpy(anchors))
    if spec.clip:
        boxes_all = boxes_all.clamp(0.0, 1.0)
    out = []
    for boxes, probs in zip(boxes_all, scores):
        kept_boxes, kept_scores, kept_labels = [], [], []
        for c in range(1, probs.shape[1]):
            col = probs[:, c]
            idx = np.flatnonzero(col > threshold)
            if idx.size == 0:
                continue
            cand = boxes[torch.from_numpy(idx)]
            if spec.suppress_at_threshold:
                nms_boxes = cand.double()
            elif spec.tf_corners:
                nms_boxes = torch.cat([torch.minimum(cand[:, :2], cand[:, 2:]),
                                       torch.maximum(cand[:, :2], cand[:, 2:])], dim=1)
            else:
                nms_boxes = cand
            keep = _nms_in_order(nms_boxes, torch.from_numpy(col[idx]), iou_threshold, cap).numpy()
            kept_boxes.append(cand.numpy()[keep])
            kept_scores.append(col[idx][keep])
            kept_labels.append(np.full(keep.size, c, dtype=np.int64))
        if not kept_scores:
            out.append(Detections(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64)))
            continue
        b, s, lab = np.concatenate(kept_boxes), np.concatenate(kept_scores), np.concatenate(kept_labels)
        order = np.argsort(-s, kind="stable")
        b, s, lab = b[order][:cap], s[order][:cap], lab[order][:cap]
        out.append(Detections(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(lab)))
    return out


def _reference_ap(ids, boxes, scores, gt_by_image: dict, iou_threshold: float = 0.4):
    """VOC-style greedy matching, one detection at a time."""
    ids, boxes = list(np.asarray(ids).reshape(-1).tolist()), np.asarray(boxes).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    npos = sum(len(np.asarray(g).reshape(-1, 4)) for g in gt_by_image.values())
    if len(scores) == 0:
        return 0.0, np.zeros(0), np.zeros(0)
    claimed, tp = set(), []
    for d in sorted(range(len(scores)), key=lambda d: -scores[d]):  # stable: ties in given order
        gt = gt_by_image.get(ids[d])
        best, best_j = -1.0, -1
        if gt is not None and len(gt):
            iou = iou_plus_one(boxes[d], gt)[0]
            best_j = int(np.argmax(iou))
            best = iou[best_j]
        hit = best >= iou_threshold and (ids[d], best_j) not in claimed
        if hit:
            claimed.add((ids[d], best_j))
        tp.append(1.0 if hit else 0.0)
    acc_tp = np.cumsum(tp)
    precision = acc_tp / np.arange(1, len(tp) + 1)
    if npos == 0:
        return 0.0, precision, np.zeros(len(tp))
    recall = acc_tp / npos
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.maximum.accumulate(np.concatenate(([0.0], precision, [0.0]))[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])), precision, recall


# ------------------------------------------------------------------------------ random inputs


def _random_outputs(rng, n_images: int = 5, anchors: int = 400, classes: int = 2, step: float = 1 / 64):
    """Model outputs with scores quantized to ``step`` (ties) and some images without candidates."""
    centers = rng.uniform(0, 1, (anchors, 2))
    half = rng.uniform(0.02, 0.3, (anchors, 2))
    anchor_boxes = np.concatenate([centers - half, centers + half], axis=1).astype(np.float32)
    offsets = rng.normal(0, 0.3, (n_images, anchors, 4)).astype(np.float32)
    logits = rng.normal(0, 2, (n_images, anchors, 1 + classes))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    probs = (np.floor(probs / step) * step).astype(np.float32)
    probs[1, :, 1:] = 0.0  # an image without any candidate
    return probs, offsets, anchor_boxes


@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize("variant", ST_VARIANTS)
def test_batched_st_postprocess_equals_per_image_reference(variant, classes):
    rng = np.random.default_rng(classes)
    scores, offsets, anchors = _random_outputs(rng, classes=classes)
    anchors_n = np.broadcast_to(anchors, offsets.shape).copy()
    expected = _reference_st_postprocess(scores, offsets, anchors_n, variant)
    assert sum(len(d) for d in expected) > 100 and len(expected[1]) == 0
    for got in (postprocess(scores, offsets, anchors, variant=variant),
                postprocess(torch.from_numpy(scores), torch.from_numpy(offsets), torch.from_numpy(anchors_n),
                            variant=variant)):
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            for x, y in zip(a.numpy(), b.numpy()):
                assert x.dtype == y.dtype and x.shape == y.shape
                np.testing.assert_array_equal(x, y)


def _random_gt_and_detections(rng, n_images: int = 30, classes: int = 2, size: int = 64):
    """Normalized GT and detections: near-duplicates of GT, random boxes, tied scores."""
    images = []
    for _ in range(n_images):
        k = int(rng.integers(0, 5))  # 0: an image without GT
        xy = rng.uniform(0, 0.7, (k, 2))
        gt = np.concatenate([xy, xy + rng.uniform(0.05, 0.3, (k, 2))], axis=1).astype(np.float32)
        gt_labels = rng.integers(1, classes + 1, k)
        d = int(rng.integers(0, 12))
        src = gt[rng.integers(0, k, d)] if k else np.zeros((d, 4), np.float32)
        jitter = rng.normal(0, 2 / size, (d, 4)).astype(np.float32)
        boxes = np.where(rng.uniform(size=(d, 1)) < 0.7, src + jitter, rng.uniform(0, 1, (d, 4)))
        boxes = np.sort(boxes.reshape(d, 2, 2), axis=1).reshape(d, 4).astype(np.float32)  # corners in order
        scores = (rng.integers(1, 8, d) / 8).astype(np.float32)  # few values: many ties
        labels = rng.integers(1, classes + 1, d)
        images.append((boxes, scores, labels, gt, gt_labels))
    return images


def test_average_precision_equals_one_detection_at_a_time_reference():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(0, 200))
        ids = rng.integers(0, 12, n)  # image 11 has no GT entry, image 10 an empty one
        xy = rng.integers(0, 50, (n, 2))
        boxes = np.concatenate([xy, xy + rng.integers(0, 20, (n, 2))], axis=1)
        scores = rng.integers(0, 5, n) / 4
        gt = {}
        for image in range(11):
            k = 0 if image == 10 else int(rng.integers(1, 5))
            gxy = rng.integers(0, 50, (k, 2))
            gt[image] = np.concatenate([gxy, gxy + rng.integers(0, 20, (k, 2))], axis=1)
        for threshold in (0.4, 0.0):
            ap, p, r = average_precision(ids, boxes, scores, gt, threshold)
            ap_ref, p_ref, r_ref = _reference_ap(ids, boxes, scores, gt, threshold)
            assert ap == ap_ref, trial
            np.testing.assert_array_equal(p, p_ref)
            np.testing.assert_array_equal(r, r_ref)


@pytest.mark.parametrize("variant", ST_VARIANTS)
def test_evaluator_equals_per_class_reference(variant):
    size = 64
    images = _random_gt_and_detections(np.random.default_rng(3), size=size)
    ev = STAPEvaluator(size, variant)
    for start in range(0, len(images), 7):  # several updates, as batches
        chunk = images[start:start + 7]
        ev.update([Detections(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(lab))
                   for b, s, lab, _, _ in chunk], [g for *_, g, _ in chunk], [gl for *_, gl in chunk],
                  list(range(start, start + len(chunk))))
    res = ev.compute()

    # reference: rasterize image by image, then one dict of GT per class and one detection at a time
    per_class = {}
    with_gt = [i for i, im in enumerate(images) if len(im[4])]
    for c in sorted({int(c) for i in with_gt for c in images[i][4]}):
        ids, boxes, scores, gt = [], [], [], {}
        for i in with_gt:
            b, s, lab, g, gl = images[i]
            px, keep = rasterize(b, size, variant, "det")
            m = keep & (lab == c)
            ids += [i] * int(m.sum())
            boxes.append(px[m])
            scores.append(s[m])
            gpx, gkeep = rasterize(g, size, variant, "gt")
            if (gkeep & (gl == c)).any():
                gt[i] = gpx[gkeep & (gl == c)]
        per_class[c] = _reference_ap(ids, np.concatenate(boxes), np.concatenate(scores), gt)
    assert res.per_class == {c: v[0] for c, v in per_class.items()}
    assert 0 < res.ap < 1
    for c, (_, p, r) in per_class.items():
        np.testing.assert_array_equal(res.per_class_precision[c], p)
        np.testing.assert_array_equal(res.per_class_recall[c], r)


# ------------------------------------------------------------------------------ evaluation loop


class _FakeRunner:
    """Deterministic outputs from each image's pixels (image i is filled with the value i)."""

    name, input_size = "fake", 32

    def __init__(self, fail_at: int | None = None):
        rng = np.random.default_rng(7)
        self.scores, self.offsets, self.anchors = _random_outputs(rng, n_images=40, anchors=300)
        self.fail_at = fail_at

    def __call__(self, images):
        index = images[:, 0, 0, 0].astype(np.int64)
        if self.fail_at is not None and self.fail_at in index:
            return self.scores[index], self.offsets[index][:, :10], np.broadcast_to(self.anchors, (len(index), 300, 4))
        return self.scores[index], self.offsets[index], np.broadcast_to(self.anchors, (len(index), 300, 4))


class _Dataset:
    """Records with random GT (some images without), areas in all three COCO size ranges."""

    def __init__(self, n: int):
        rng = np.random.default_rng(11)
        self.records = [
            SimpleNamespace(image_id=1000 + i, width=640, height=480, boxes=gt, labels=gt_labels.astype(np.int64),
                            iscrowd=np.zeros(len(gt), bool), areas=rng.uniform(100, 20000, len(gt)).astype(np.float32))
            for i, (*_, gt, gt_labels) in enumerate(_random_gt_and_detections(rng, n_images=n, classes=1))]

    def __len__(self):
        return len(self.records)


def test_pipelined_evaluation_equals_a_serial_loop():
    from ssd_mnv1.evaluation import evaluate

    dataset = _Dataset(37)
    records = dataset.records
    images = np.arange(37, dtype=np.uint8)[:, None, None, None].repeat(32, 1).repeat(32, 2).repeat(3, 3)
    runner = _FakeRunner()
    result = evaluate(runner, dataset, ("st20", "st25", "coco"), batch_size=8, images=images, progress=False)

    evaluators = {v: STAPEvaluator(32, v, sync_on_compute=False) for v in ST_VARIANTS}
    coco_dets = {}
    for start in range(0, 37, 8):
        idx = list(range(start, min(start + 8, 37)))
        outputs = runner(images[idx])
        for v in ST_VARIANTS:
            dets = postprocess(*outputs, variant=v)
            evaluators[v].update(dets, [records[i].boxes for i in idx], [records[i].labels for i in idx], idx)
            if v == "st25":
                coco_dets.update({records[i].image_id: d for i, d in zip(idx, dets)})
    assert result.images == 37
    for v in ST_VARIANTS:
        assert result.st_ap[v] == round(100.0 * evaluators[v].compute().ap, 4)
    expected_coco = coco_metrics(records, coco_dets)
    assert result.coco["AP50"] > 0
    np.testing.assert_equal(result.coco, {k: round(100.0 * x, 4) for k, x in expected_coco.items()})


def test_an_error_in_the_post_processing_thread_reaches_the_caller():
    from ssd_mnv1.evaluation import evaluate

    images = np.arange(20, dtype=np.uint8)[:, None, None, None].repeat(32, 1).repeat(32, 2).repeat(3, 3)
    with pytest.raises(RuntimeError):  # offsets of the wrong shape for the anchors: decode fails
        evaluate(_FakeRunner(fail_at=9), _Dataset(20), ("st20",), batch_size=4, images=images, progress=False)


def test_evaluation_plan_gives_decoding_half_the_cpus():
    from ssd_mnv1.cpus import plan_cpus

    for cpus, workers, threads in ((1, 1, 1), (2, 1, 1), (4, 2, 2), (16, 4, 12)):
        plan = plan_cpus(purpose="evaluate", cpus=cpus)
        assert (plan.workers, plan.threads) == (workers, threads)
    assert plan_cpus(0, purpose="evaluate", cpus=4).threads == 4


# ------------------------------------------------------------------------------ PyTorch runner


def test_torch_runner_folded_batchnorm_is_close_and_leaves_the_model_alone(trained_like_model):
    from ssd_mnv1.runners import TorchRunner

    model = trained_like_model(192)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pixels = np.random.default_rng(0).integers(0, 256, (2, 192, 192, 3), dtype=np.uint8)
    plain = TorchRunner(model)(pixels)
    folded_runner = TorchRunner(model, fold_batchnorm=True)
    folded = folded_runner(pixels)
    assert folded_runner.model is model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    np.testing.assert_allclose(folded[0], plain[0], atol=1e-5)
    np.testing.assert_allclose(folded[1], plain[1], atol=1e-4)
    np.testing.assert_array_equal(folded[2], plain[2])


def test_normalization_table_gives_normalize_bits():
    # what TorchRunner does on an accelerator: uint8 pixels through a 256-entry table
    from ssd_mnv1.preprocess import normalize

    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    table = torch.from_numpy(normalize(np.arange(256, dtype=np.uint8)))
    np.testing.assert_array_equal(table[torch.from_numpy(pixels).long()].numpy(), normalize(pixels))


def test_evaluate_runs_a_pytorch_model_with_its_batchnorms_folded(trained_like_model, tmp_path, monkeypatch):
    # ssd_mnv1.evaluate opens PyTorch files with EVAL_TORCH_OPTIONS (BN folded: ~25% less forward
    # time); the folded runner stays within float noise of the model as trained
    import ssd_mnv1.runners as runners
    from ssd_mnv1.checkpoint import save_checkpoint
    from ssd_mnv1.evaluate import main

    path = save_checkpoint(trained_like_model(192), tmp_path / "m.ckpt")
    folded, plain = runners.open_runner(path, **runners.EVAL_TORCH_OPTIONS), runners.open_runner(path)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded._net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain._net.modules())
    pixels = np.random.default_rng(1).integers(0, 256, (2, 192, 192, 3), dtype=np.uint8)
    np.testing.assert_allclose(folded(pixels)[0], plain(pixels)[0], atol=1e-5)

    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop before the dataset is read

    monkeypatch.setattr(runners, "open_runner", spy)
    with pytest.raises(KeyboardInterrupt):
        main([str(path), "--data", str(tmp_path)])
    assert {k: seen[k] for k in runners.EVAL_TORCH_OPTIONS} == runners.EVAL_TORCH_OPTIONS
