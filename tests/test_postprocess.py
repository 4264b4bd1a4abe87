"""Post-processing per variant (docs/st_model.md §6): deploy, ST 2.0 and ST 2025.

Box coordinates are dyadic fractions where exact float arithmetic matters.
"""

import numpy as np
import pytest
import torch

from ssd_mnv1 import postprocess
from ssd_mnv1.postprocess import VARIANTS, Detections

ST_VARIANTS = ("st20", "st25")


def _outputs(boxes, scores_person, scores_other=None):
    """Model-like outputs with zero offsets so that decoded boxes equal the anchors."""
    n = len(boxes)
    anchors = torch.tensor(boxes, dtype=torch.float32)
    cols = [torch.tensor(scores_person)]
    if scores_other is not None:
        cols.append(torch.tensor(scores_other))
    fg = torch.stack(cols, dim=1)
    scores = torch.cat([1 - fg.sum(1, keepdim=True), fg], dim=1)
    return scores, torch.zeros(n, 4), anchors


def _np_outputs(boxes, person_scores):
    """numpy outputs whose decoded boxes are exactly ``boxes``: anchors = boxes, offsets = 0."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    p = np.asarray(person_scores, np.float32)
    scores = np.stack([1.0 - p, p], axis=1).astype(np.float32)
    return scores, np.zeros_like(boxes), boxes


# ------------------------------------------------------------------------------------------ deploy


def test_nms_suppresses_overlapping_box_of_same_class():
    out = postprocess(*_outputs([[0, 0, .5, .5], [.01, .01, .5, .5], [.6, .6, .9, .9]], [.9, .8, .7]))
    (det,) = out
    assert det.scores.tolist() == [0.8999999761581421, 0.699999988079071]
    assert det.labels.tolist() == [1, 1]


def test_nms_is_per_class():
    scores, offsets, anchors = _outputs([[0, 0, .5, .5], [0, 0, .5, .5]], [.6, 0.0], [0.0, .35])
    (det,) = postprocess(scores, offsets, anchors, score_threshold=0.3)
    assert sorted(det.labels.tolist()) == [1, 2]


def test_score_threshold_is_strict_and_max_detections_caps():
    boxes = [[i / 10, 0, i / 10 + 0.05, 0.05] for i in range(5)]
    (det,) = postprocess(*_outputs(boxes, [.5, .6, .7, .8, .9]), score_threshold=0.5, max_detections=3)
    assert torch.allclose(det.scores, torch.tensor([.9, .8, .7]))


def test_boxes_are_clipped_and_mapped_to_pixels():
    (det,) = postprocess(*_outputs([[-0.1, 0.2, 0.5, 1.2]], [.9]))
    assert torch.allclose(det.boxes, torch.tensor([[0.0, 0.2, 0.5, 1.0]]))
    assert torch.allclose(det.to_pixels(640, 480), torch.tensor([[0.0, 96.0, 320.0, 480.0]]))


def test_batched_input_gives_one_result_per_image():
    s, o, a = _outputs([[0, 0, .5, .5]], [.9])
    assert len(postprocess(s[None].repeat(3, 1, 1), o[None].repeat(3, 1, 1), a[None].repeat(3, 1, 1))) == 3


def test_deploy_default_keeps_confident_boxes_only():
    # deploy keeps score > 0.5; the ST variants keep score > 0.001
    out = _np_outputs([[0, 0, .25, .25], [.5, .5, .75, .75]], [.6, .4])
    assert len(postprocess(*out)[0]) == 1
    assert all(len(postprocess(*out, variant=v)[0]) == 2 for v in ST_VARIANTS)


# ---------------------------------------------------------------------------------------- variants


def test_iou_exactly_half_is_suppressed_by_st20_and_kept_by_st25():
    # B lies inside A with half its area: IoU = 0.125 / 0.25 = 0.5 exactly
    out = _np_outputs([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.25]], [0.9, 0.8])
    (d20,), (d25,) = postprocess(*out, variant="st20"), postprocess(*out, variant="st25")
    assert d20.scores.tolist() == [np.float32(0.9)] and d20.boxes.tolist() == [[0, 0, 0.5, 0.5]]
    assert d25.scores.tolist() == [np.float32(0.9), np.float32(0.8)]
    assert d20.labels.tolist() == [1] and d25.labels.tolist() == [1, 1]


def test_st25_caps_at_100_and_clips_st20_does_neither():
    n = 150
    x = np.arange(n, dtype=np.float32) / 256  # disjoint thin boxes, no NMS interaction
    boxes = np.stack([x, np.zeros(n), x + 1 / 512, np.full(n, 1.5)], axis=1)
    p = np.linspace(0.9, 0.1, n, dtype=np.float32)
    out = _np_outputs(boxes, p)
    (d20,), (d25,) = postprocess(*out, variant="st20"), postprocess(*out, variant="st25")
    assert len(d20) == n and len(d25) == 100
    np.testing.assert_array_equal(d25.scores.numpy(), p[:100])  # the 100 best
    assert d20.boxes[:, 3].max() == np.float32(1.5) and d25.boxes[:, 3].max() == 1.0
    assert len(postprocess(*out, variant="st25", max_detections=10)[0]) == 10


def test_capped_nms_equals_full_nms_truncated():
    # every anchor above the threshold (an untrained model): the capped NMS stops early on a
    # score-ordered prefix; its result must be the first `cap` boxes of the full NMS
    rng = np.random.default_rng(2)
    n = 3000
    xy = rng.uniform(-0.1, 0.9, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.02, 0.4, (n, 2))], axis=1).astype(np.float32)
    out = _np_outputs(boxes, rng.uniform(0.3, 0.7, n))
    for variant in ST_VARIANTS:
        (full,) = postprocess(*out, variant=variant, max_detections=10**9)
        assert len(full) > 300
        for cap in (1, 100, 300):
            (capped,) = postprocess(*out, variant=variant, max_detections=cap)
            for a, b in zip(capped.numpy(), full.numpy()):
                np.testing.assert_array_equal(a, b[:cap])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_capped_nms_keeps_what_one_full_nms_keeps(dtype):
    # the capped NMS runs chunk by chunk with the boxes kept so far in front; it must give the first
    # `cap` boxes of one torchvision NMS over everything, in order, whatever the chunking: clusters
    # of near-duplicates on top (few kept per chunk), scattered boxes below (most kept), boxes on a
    # 1/16 grid (IoU exactly at the threshold), tied scores and crossed corners
    from torchvision import ops

    from ssd_mnv1.postprocess import _nms_in_order

    rng = np.random.default_rng(5)
    for trial in range(12):
        n_top, n_tail = int(rng.integers(50, 900)), int(rng.integers(0, 1500))
        centers = rng.uniform(0, 1, (int(rng.integers(1, 12)), 2))
        top_xy = centers[rng.integers(0, len(centers), n_top)] + rng.normal(0, 0.01, (n_top, 2))
        top = np.concatenate([top_xy, top_xy + 0.3], axis=1)
        tail_xy = rng.uniform(-0.1, 1, (n_tail, 2))
        tail = np.concatenate([tail_xy, tail_xy + rng.uniform(0.01, 0.2, (n_tail, 2))], axis=1)
        boxes = np.concatenate([top, tail])
        if trial % 3 == 0:
            boxes = np.round(boxes * 16) / 16
        if trial % 4 == 1:
            boxes[::17] = boxes[::17][:, [2, 3, 0, 1]]
        scores = np.concatenate([rng.uniform(0.5, 1, n_top), rng.uniform(0.001, 0.5, n_tail)])
        scores = (np.round(scores * 64) / 64).astype(np.float32)  # ties
        boxes_t, scores_t = torch.from_numpy(boxes).to(dtype), torch.from_numpy(scores)
        order = torch.from_numpy(np.argsort(-scores, kind="stable"))
        for threshold in (0.5, float(np.nextafter(0.5, 0.0)), 0.3):
            full = order[ops.nms(boxes_t[order], -torch.arange(len(order), dtype=dtype), threshold)]
            for cap in (1, 7, 100, 250, len(boxes)):
                got = _nms_in_order(boxes_t, scores_t, threshold, cap)
                np.testing.assert_array_equal(got.numpy(), full[:cap].numpy(), err_msg=f"{trial} {threshold} {cap}")
            np.testing.assert_array_equal(_nms_in_order(boxes_t, scores_t, threshold).numpy(), full.numpy())


def test_st_score_threshold_is_strict_and_classes_are_separate():
    # 3 columns: background, class 1, class 2; the same box scores in both classes
    box = np.float32([[0.1, 0.1, 0.4, 0.4]])
    scores = np.array([[0.2, 0.5, 0.3]], np.float32)
    for variant in ST_VARIANTS:
        (det,) = postprocess(scores, np.zeros((1, 4), np.float32), box, variant=variant, score_threshold=0.3)
        assert det.labels.tolist() == [1] and det.scores.tolist() == [np.float32(0.5)]  # 0.3 is not > 0.3
        (det,) = postprocess(scores, np.zeros((1, 4), np.float32), box, variant=variant)
        assert det.labels.tolist() == [1, 2]  # per-class NMS: no suppression across classes


def test_equal_scores_come_in_class_then_anchor_order():
    # ST-AP breaks score ties in the order the detections come in
    boxes = np.float32([[0, 0, .125, .125], [.5, .5, .625, .625], [.25, .25, .375, .375]])
    scores = np.float32([[.2, .4, .4], [.2, .4, .4], [.5, .5, 0]])
    for variant in ST_VARIANTS:
        (det,) = postprocess(scores, np.zeros((3, 4), np.float32), boxes, variant=variant)
        assert det.labels.tolist() == [1, 1, 1, 2, 2]
        np.testing.assert_array_equal(det.boxes.numpy(), boxes[[2, 0, 1, 0, 1]])


def test_batches_torch_and_numpy_decode_alike():
    rng = np.random.default_rng(0)
    na = 300
    anchors = np.sort(rng.uniform(-0.2, 1.2, (na, 2, 2)), axis=1).transpose(0, 2, 1).reshape(na, 4)
    anchors = anchors.astype(np.float32)
    offsets = rng.normal(0, 0.2, (2, na, 4)).astype(np.float32)
    p = rng.uniform(0, 1, (2, na)).astype(np.float32)
    scores = np.stack([1 - p, p], axis=-1)
    for variant in VARIANTS:
        batched = postprocess(scores, offsets, anchors, variant=variant)
        from_torch = postprocess(torch.from_numpy(scores), torch.from_numpy(offsets),
                                 torch.from_numpy(anchors)[None].expand(2, -1, -1), variant=variant)
        single = postprocess(scores[1], offsets[1], anchors, variant=variant)
        for a, b in zip(batched[1].numpy(), single[0].numpy()):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(batched[0].numpy(), from_torch[0].numpy()):
            np.testing.assert_array_equal(a, b)
        assert np.all(np.diff(batched[0].scores.numpy()) <= 0)
        # decoded = anchor + offset * anchor size
        wh = np.tile(anchors[:, 2:] - anchors[:, :2], 2)
        decoded = anchors + offsets[0] * wh
        if VARIANTS[variant].clip:
            decoded = np.clip(decoded, 0, 1)
        assert all(np.isclose(decoded, k, atol=1e-6).all(axis=1).any() for k in batched[0].boxes.numpy())


def test_st20_greedy_nms_matches_a_plain_python_reference():
    rng = np.random.default_rng(1)
    n = 200
    xy = rng.uniform(0, 0.8, (n, 2))
    wh = rng.uniform(0.05, 0.3, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    p = rng.uniform(0.01, 1, n).astype(np.float32)
    p[10] = p[11]  # a tie, resolved in anchor order
    (det,) = postprocess(*_np_outputs(boxes, p), variant="st20")

    def iou(a, c):
        iw = max(0.0, min(a[2], c[2]) - max(a[0], c[0]))
        ih = max(0.0, min(a[3], c[3]) - max(a[1], c[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (c[2] - c[0]) * (c[3] - c[1]) - inter)

    kept = []
    for i in sorted(range(n), key=lambda i: -p[i]):
        if all(iou(boxes[i].astype(float), boxes[j].astype(float)) < 0.5 for j in kept):
            kept.append(i)
    np.testing.assert_array_equal(det.boxes.numpy(), boxes[kept])


def test_tf_combined_nms_backend_equals_torchvision_when_no_scores_tie():
    # ST 2025 calls TF's combined NMS; without equal scores its result is fully determined, so the
    # torchvision path must give exactly the same boxes in the same order (cap and clip included)
    pytest.importorskip("tensorflow")
    rng = np.random.default_rng(4)
    n = 2000
    xy = rng.uniform(-0.1, 0.9, (2, n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.02, 0.4, (2, n, 2))], axis=2).astype(np.float32)
    p = rng.permutation(2 * n).reshape(2, n).astype(np.float32) / (2 * n)  # distinct scores
    scores = np.stack([1 - p, p], axis=-1)
    anchors = np.float32([[0.0, 0.0, 1.0, 1.0]]).repeat(n, 0)
    offsets = boxes - anchors  # anchor size 1: decoded = anchors + offsets = boxes
    for cap in (100, 7):
        ours = postprocess(scores, offsets, anchors, variant="st25", max_detections=cap)
        tf_ = postprocess(scores, offsets, anchors, variant="st25", max_detections=cap, nms="tf")
        for a, b in zip(ours, tf_):
            assert len(a) == cap
            np.testing.assert_array_equal(a.scores.numpy(), b.scores.numpy())
            np.testing.assert_array_equal(a.labels.numpy(), b.labels.numpy())
            np.testing.assert_allclose(a.boxes.numpy(), b.boxes.numpy(), atol=1e-6)


def test_tf_nms_backend_is_refused_outside_st25_and_unknown_names_list_the_allowed_ones():
    out = _np_outputs([[0, 0, 1, 1]], [0.9])
    for variant in ("st20", "deploy"):
        with pytest.raises(ValueError, match="st25"):
            postprocess(*out, variant=variant, nms="tf")
    with pytest.raises(ValueError, match="torch, tf"):
        postprocess(*out, variant="st25", nms="onnx")
    with pytest.raises(ValueError, match="deploy, st20, st25"):
        postprocess(*out, variant="2025")


def test_no_detection_gives_empty_typed_results():
    out = _np_outputs([[0, 0, .5, .5]], [0.0])
    for variant in VARIANTS:
        (det,) = postprocess(*out, variant=variant)
        assert isinstance(det, Detections) and len(det) == 0
        assert det.boxes.shape == (0, 4) and det.labels.dtype == torch.int64
