"""ST-AP (st_reference.md §6, §7): post-processing per variant, rasterization, matching, AP.

Expected values are computed by hand in the comments; box coordinates are dyadic fractions so
that the float arithmetic is exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssd_mnv1.metrics import (VARIANTS, STAPEvaluator, STAPResult, average_precision, save_pr_curve,
                              st_detections)
from ssd_mnv1.metrics.st_ap import (iou_plus_one, rasterize, rasterize_padilla, rasterize_st25_detections,
                                    rasterize_st25_gt)


def _outputs(boxes, person_scores):
    """Model outputs whose decoded boxes are exactly ``boxes``: anchors = boxes, offsets = 0."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    p = np.asarray(person_scores, np.float32)
    scores = np.stack([1.0 - p, p], axis=1).astype(np.float32)
    return scores, np.zeros_like(boxes), boxes


# ------------------------------------------------------------------------------------ AP matching


def test_perfect_detections_give_ap_one():
    gt = {1: np.array([[10, 10, 50, 60], [70, 5, 90, 40]]), 2: np.array([[0, 0, 20, 20]])}
    ids = [1, 1, 2]
    boxes = np.concatenate([gt[1], gt[2]])
    ap, precision, recall = average_precision(ids, boxes, [0.9, 0.8, 0.7], gt)
    assert ap == 1.0
    np.testing.assert_allclose(precision, [1, 1, 1])
    np.testing.assert_allclose(recall, [1 / 3, 2 / 3, 1])


def test_score_ties_keep_the_given_order():
    gt = {1: np.array([[10, 10, 50, 50]])}
    miss, hit = [60, 60, 70, 70], [10, 10, 50, 50]
    # Same score: the first given (a miss) is visited first -> P = [0, 1/2], R = [0, 1] -> AP 0.5.
    ap, precision, _ = average_precision([1, 1], [miss, hit], [0.5, 0.5], gt)
    assert ap == pytest.approx(0.5)
    np.testing.assert_allclose(precision, [0.0, 0.5])
    # Given the other way round the hit comes first -> AP 1.
    ap, _, _ = average_precision([1, 1], [hit, miss], [0.5, 0.5], gt)
    assert ap == 1.0


def test_duplicate_detection_of_one_gt_is_a_false_positive():
    gt = {1: np.array([[10, 10, 50, 50]])}
    ap, precision, recall = average_precision([1, 1], [[10, 10, 50, 50], [11, 10, 50, 50]], [0.9, 0.8], gt)
    np.testing.assert_allclose(precision, [1.0, 0.5])
    np.testing.assert_allclose(recall, [1.0, 1.0])
    assert ap == 1.0  # the FP comes after full recall


def test_best_gt_already_taken_is_a_false_positive_even_if_another_gt_qualifies():
    # GT a = [0,0,9,9], GT b = [2,0,11,9]. The second detection [1,0,10,9] has +1 IoU 90/110 with
    # both; a (first) wins the tie, is already taken -> FP although b is free (VOC-style greedy).
    gt = {1: np.array([[0, 0, 9, 9], [2, 0, 11, 9]])}
    ap, precision, recall = average_precision([1, 1], [[0, 0, 9, 9], [1, 0, 10, 9]], [0.9, 0.8], gt)
    np.testing.assert_allclose(precision, [1.0, 0.5])
    np.testing.assert_allclose(recall, [0.5, 0.5])
    assert ap == pytest.approx(0.5)


def test_plus_one_pixel_iou_turns_a_borderline_miss_into_a_match():
    det, gt = np.array([[0, 0, 4, 4]]), np.array([[2, 0, 6, 4]])
    # continuous IoU: (2*4) / (16 + 16 - 8) = 1/3 < 0.4; +1 pixel: (3*5) / (25 + 25 - 15) = 3/7 >= 0.4
    assert iou_plus_one(det, gt)[0, 0] == pytest.approx(3 / 7)
    ap, _, _ = average_precision([7], det, [0.9], {7: gt})
    assert ap == 1.0
    ap, _, _ = average_precision([7], det, [0.9], {7: gt}, iou_threshold=0.43)
    assert ap == 0.0


def test_plus_one_iou_touching_boxes_overlap_and_strictly_separated_ones_do_not():
    a = np.array([[0, 0, 4, 4]])
    # sharing the column x = 4: inter 1*5 = 5, union 25 + 25 - 5 = 45
    assert iou_plus_one(a, [[4, 0, 8, 4]])[0, 0] == pytest.approx(5 / 45)
    assert iou_plus_one(a, [[5, 0, 9, 4]])[0, 0] == 0.0
    assert iou_plus_one(a, [[0, 5, 4, 9]])[0, 0] == 0.0


def test_two_images_hand_computed_ap():
    # image 1: GT a1, a2; image 2: GT b1 (npos 3). By score:
    # 0.9 a1 TP | 0.8 image 2 miss FP | 0.7 b1 TP | 0.6 a1 again FP | 0.5 a2 TP
    # P = 1, 1/2, 2/3, 1/2, 3/5;  R = 1/3, 1/3, 2/3, 2/3, 1
    # AP = 1/3*1 + 1/3*2/3 + 1/3*3/5 = 34/45
    a1, a2, b1 = [0, 0, 9, 9], [20, 20, 39, 39], [5, 5, 25, 25]
    gt = {1: np.array([a1, a2]), 2: np.array([b1])}
    ids = [1, 2, 2, 1, 1]
    boxes = [a1, [50, 50, 60, 60], b1, a1, a2]
    ap, precision, recall = average_precision(ids, boxes, [0.9, 0.8, 0.7, 0.6, 0.5], gt)
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 1 / 2, 3 / 5])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    assert ap == pytest.approx(34 / 45)
    # the same through the evaluator, from normalized boxes at S = 64 (exact in float32)
    ev = STAPEvaluator(64, "st25")
    norm = lambda b: np.asarray(b, np.float32).reshape(-1, 4) / 64  # noqa: E731
    ev.add(1, norm([a1, a1, a2]), [0.9, 0.6, 0.5], [1, 1, 1], norm([a1, a2]), [1, 1])
    ev.add(2, norm([[50, 50, 60, 60], b1]), [0.8, 0.7], [1, 1], norm([b1]), [1])
    res = ev.compute()
    assert res.ap == pytest.approx(34 / 45)
    assert (res.num_images, res.num_gt, res.num_detections) == (2, 3, 5)


def test_no_detections_give_ap_zero():
    ap, precision, recall = average_precision([], np.zeros((0, 4)), [], {1: np.array([[0, 0, 5, 5]])})
    assert ap == 0.0 and precision.size == 0 and recall.size == 0
    ev = STAPEvaluator(64, "st20")
    ev.add(1, np.zeros((0, 4)), [], [], [[0.1, 0.1, 0.5, 0.5]], [1])
    assert ev.compute().ap == 0.0


def test_image_with_gt_but_no_detections_caps_recall():
    # image 1: one GT, found at 0.9; image 2: one GT, no detection at all (npos 2).
    # P = [1], R = [1/2] -> AP = 1/2 * 1 = 1/2
    gt = {1: np.array([[0, 0, 15, 15]]), 2: np.array([[16, 16, 31, 31]])}
    ap, precision, recall = average_precision([1], [[0, 0, 15, 15]], [0.9], gt)
    np.testing.assert_allclose(precision, [1.0])
    np.testing.assert_allclose(recall, [0.5])
    assert ap == pytest.approx(0.5)
    for variant in VARIANTS:
        ev = STAPEvaluator(64, variant)
        ev.add(1, [[0.0, 0.0, 0.25, 0.25]], [0.9], [1], [[0.0, 0.0, 0.25, 0.25]], [1])
        ev.add(2, np.zeros((0, 4)), [], [], [[0.25, 0.25, 0.5, 0.5]], [1])
        res = ev.compute()
        assert res.ap == pytest.approx(0.5), variant
        assert (res.num_images, res.num_gt, res.num_detections, res.skipped_images) == (2, 2, 1, 0)


def test_image_without_gt_is_left_out_and_counted():
    ev = STAPEvaluator(64, "st20")
    ev.add(1, [[0.25, 0.25, 0.5, 0.5]], [0.5], [1], [[0.25, 0.25, 0.5, 0.5]], [1])
    # a confident detection on an image without GT would be an FP if the image were evaluated
    ev.add(2, [[0.0, 0.0, 0.5, 0.5]], [0.99], [1], np.zeros((0, 4)), np.zeros(0, np.int64))
    res = ev.compute()
    assert res.ap == 1.0
    assert (res.num_images, res.skipped_images, res.num_detections) == (1, 1, 1)


def test_evaluator_ties_keep_image_insertion_order():
    # Both images have one GT; equal scores. Image 5 (added first) has the miss -> P = [0, 1/2].
    ev = STAPEvaluator(64, "st20")
    ev.add(5, [[0.5, 0.5, 0.75, 0.75]], [0.5], [1], [[0.0, 0.0, 0.25, 0.25]], [1])
    ev.add(3, [[0.0, 0.0, 0.25, 0.25]], [0.5], [1], [[0.0, 0.0, 0.25, 0.25]], [1])
    res = ev.compute()
    np.testing.assert_allclose(res.precision, [0.0, 0.5])
    np.testing.assert_allclose(res.recall, [0.0, 0.5])
    assert res.ap == pytest.approx(0.25)
    assert res.mean_precision == pytest.approx(0.25) and res.mean_recall == pytest.approx(0.25)


def test_ap_is_the_mean_over_classes_present_in_gt():
    ev = STAPEvaluator(64, "st20")
    box = [[0.0, 0.0, 0.25, 0.25]]
    ev.add(1, box + [[0.5, 0.5, 0.75, 0.75]], [0.9, 0.8], [1, 2], box + box, [1, 2])
    # class 3 only in detections: not an evaluated class
    ev.add(2, box, [0.7], [3], box, [1])
    res = ev.compute()
    assert res.per_class == {1: pytest.approx(0.5), 2: 0.0}
    assert res.ap == pytest.approx(0.25)
    assert set(res.per_class_precision) == {1, 2}


# ---------------------------------------------------------------------------------- rasterization


def test_rasterization_rounds_half_to_even():
    # S = 8: 0.3125 * 8 = 2.5 -> 2 and 0.4375 * 8 = 3.5 -> 4 (round half to even)
    box = [[0.3125, 0.3125, 0.4375, 0.4375]]
    np.testing.assert_array_equal(rasterize_st25_gt(box, 8), [[2, 2, 4, 4]])
    px, keep = rasterize_st25_detections(box, 8)
    np.testing.assert_array_equal(px, [[2, 2, 4, 4]])
    assert keep.all()
    # Padilla: cx = 0.375, w = 0.125: x1 = round((0.75 - 0.125) * 4) = round(2.5) = 2,
    # x2 = x1 + round(0.125 * 8) = 3 (not round(S * x2) = 4)
    np.testing.assert_array_equal(rasterize_padilla(box, 8), [[2, 2, 3, 3]])
    # cx = 0.53125, w = 0.1875: x1 = round(3.5) = 4, x2 = 4 + round(1.5) = 6; 2025 gives 4 .. 5
    box = [[0.4375, 0.4375, 0.625, 0.625]]
    np.testing.assert_array_equal(rasterize_padilla(box, 8), [[4, 4, 6, 6]])
    np.testing.assert_array_equal(rasterize_st25_gt(box, 8), [[4, 4, 5, 5]])


def test_rasterization_clipping_and_zero_sum_drop_per_variant():
    box = [[-0.1, -0.1, 1.2, 1.2]]
    np.testing.assert_array_equal(rasterize_padilla(box, 8), [[0, 0, 7, 7]])
    np.testing.assert_array_equal(rasterize_st25_gt(box, 8), [[0, 0, 7, 7]])
    px, _ = rasterize_st25_detections(box, 8)  # detections are not clipped (-0.8 -> -1, 9.6 -> 10)
    np.testing.assert_array_equal(px, [[-1, -1, 10, 10]])
    # a 2025 detection rounding to [0, 0, 0, 0] is dropped like ST's padding rows
    px, keep = rasterize([[0.0, 0.0, 0.05, 0.05], [0.0, 0.0, 0.125, 0.125]], 8, "st25", "det")
    assert keep.tolist() == [False, True]
    _, keep = rasterize([[0.0, 0.0, 0.05, 0.05]], 8, "st20", "det")
    assert keep.tolist() == [True]


# -------------------------------------------------------------------------------- post-processing


def test_iou_exactly_half_is_suppressed_by_st20_and_kept_by_st25():
    # B lies inside A with half its area: IoU = 0.125 / 0.25 = 0.5 exactly
    scores, offsets, anchors = _outputs([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.25]], [0.9, 0.8])
    (b20, s20, l20), = st_detections(scores, offsets, anchors, "st20")
    (b25, s25, l25), = st_detections(scores, offsets, anchors, "st25")
    np.testing.assert_array_equal(s20, np.float32([0.9]))
    np.testing.assert_array_equal(b20, [[0, 0, 0.5, 0.5]])
    np.testing.assert_array_equal(s25, np.float32([0.9, 0.8]))
    assert l20.tolist() == [1] and l25.tolist() == [1, 1]


def test_st25_caps_at_100_and_clips_st20_does_neither():
    n = 150
    x = np.arange(n, dtype=np.float32) / 256  # disjoint thin boxes, no NMS interaction
    boxes = np.stack([x, np.zeros(n), x + 1 / 512, np.full(n, 1.5)], axis=1)
    p = np.linspace(0.9, 0.1, n, dtype=np.float32)
    scores, offsets, anchors = _outputs(boxes, p)
    (b20, s20, _), = st_detections(scores, offsets, anchors, "st20")
    (b25, s25, _), = st_detections(scores, offsets, anchors, "st25")
    assert len(s20) == n and len(s25) == 100
    np.testing.assert_array_equal(s25, p[:100])  # the 100 best
    assert b20[:, 3].max() == np.float32(1.5) and b25[:, 3].max() == 1.0
    (b10, _, _), = st_detections(scores, offsets, anchors, "st25", max_detections=10)
    assert len(b10) == 10


def test_capped_nms_equals_full_nms_truncated():
    # every anchor above the threshold (an untrained model): the capped NMS stops early on a
    # score-ordered prefix; its result must be the first `cap` boxes of the full NMS
    rng = np.random.default_rng(2)
    n = 3000
    xy = rng.uniform(-0.1, 0.9, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.02, 0.4, (n, 2))], axis=1).astype(np.float32)
    p = rng.uniform(0.3, 0.7, n).astype(np.float32)
    out = _outputs(boxes, p)
    for variant in VARIANTS:
        full, = st_detections(*out, variant, max_detections=10**9)
        assert len(full[1]) > 300
        for cap in (1, 100, 300):
            capped, = st_detections(*out, variant, max_detections=cap)
            for a, b in zip(capped, full):
                np.testing.assert_array_equal(a, b[:cap])


def test_score_threshold_is_strict_and_classes_are_separate():
    # 3 columns: background, class 1, class 2; the same box scores in both classes
    box = [[0.1, 0.1, 0.4, 0.4]]
    scores = np.array([[0.2, 0.5, 0.3]], np.float32)
    for variant in VARIANTS:
        (b, s, l), = st_detections(scores, np.zeros((1, 4), np.float32), np.float32(box), variant,
                                   score_threshold=0.3)
        assert l.tolist() == [1] and s.tolist() == [np.float32(0.5)]  # 0.3 is not > 0.3
        (b, s, l), = st_detections(scores, np.zeros((1, 4), np.float32), np.float32(box), variant)
        assert l.tolist() == [1, 2]  # per-class NMS: no suppression across classes


def test_st_detections_decodes_batches_torch_and_numpy_alike():
    rng = np.random.default_rng(0)
    na = 300
    anchors = np.sort(rng.uniform(-0.2, 1.2, (na, 2, 2)), axis=1).transpose(0, 2, 1).reshape(na, 4)
    anchors = anchors[:, [0, 1, 2, 3]].astype(np.float32)
    offsets = rng.normal(0, 0.2, (2, na, 4)).astype(np.float32)
    p = rng.uniform(0, 1, (2, na)).astype(np.float32)
    scores = np.stack([1 - p, p], axis=-1)
    for variant in VARIANTS:
        batched = st_detections(scores, offsets, anchors, variant)
        from_torch = st_detections(torch.from_numpy(scores), torch.from_numpy(offsets),
                                   torch.from_numpy(anchors)[None].expand(2, -1, -1), variant)
        single = st_detections(scores[1], offsets[1], anchors, variant)
        for a, b in zip(batched[1], single[0]):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(batched[0], from_torch[0]):
            np.testing.assert_array_equal(a, b)
        s = batched[0][1]
        assert np.all(np.diff(s) <= 0)
        # decoded = anchor + offset * anchor size
        wh = np.tile(anchors[:, 2:] - anchors[:, :2], 2)
        decoded = anchors + offsets[0] * wh
        if variant == "st25":
            decoded = np.clip(decoded, 0, 1)
        kept = batched[0][0]
        assert all(np.isclose(decoded, k, atol=1e-6).all(axis=1).any() for k in kept)


def test_st20_greedy_nms_matches_a_plain_python_reference():
    rng = np.random.default_rng(1)
    n = 200
    xy = rng.uniform(0, 0.8, (n, 2))
    wh = rng.uniform(0.05, 0.3, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    p = rng.uniform(0.01, 1, n).astype(np.float32)
    p[10] = p[11]  # a tie, resolved in anchor order
    (b, s, _), = st_detections(*_outputs(boxes, p), "st20")

    def iou(a, c):
        iw = max(0.0, min(a[2], c[2]) - max(a[0], c[0]))
        ih = max(0.0, min(a[3], c[3]) - max(a[1], c[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (c[2] - c[0]) * (c[3] - c[1]) - inter)

    kept = []
    for i in sorted(range(n), key=lambda i: -p[i]):
        if all(iou(boxes[i].astype(float), boxes[j].astype(float)) < 0.5 for j in kept):
            kept.append(i)
    np.testing.assert_array_equal(b, boxes[kept])


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
        ours = st_detections(scores, offsets, anchors, "st25", max_detections=cap)
        tf_ = st_detections(scores, offsets, anchors, "st25", max_detections=cap, nms="tf")
        for (b1, s1, l1), (b2, s2, l2) in zip(ours, tf_):
            assert len(s1) == cap
            np.testing.assert_array_equal(s1, s2)
            np.testing.assert_array_equal(l1, l2)
            np.testing.assert_allclose(b1, b2, atol=1e-6)


def test_tf_nms_backend_is_refused_for_st20_and_unknown_backends_are_named():
    out = _outputs([[0, 0, 1, 1]], [0.9])
    with pytest.raises(ValueError, match="st25"):
        st_detections(*out, "st20", nms="tf")
    with pytest.raises(ValueError, match="torch, tf"):
        st_detections(*out, "st25", nms="onnx")


def test_bad_variant_is_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match="st20, st25"):
        STAPEvaluator(64, "voc")
    with pytest.raises(ValueError, match="st20, st25"):
        st_detections(*_outputs([[0, 0, 1, 1]], [0.9]), variant="2025")


# ----------------------------------------------------------------------------------- distributed


def _feed(ev, images):
    for image_id, det, scores, gt in images:
        ev.add(image_id, det, scores, np.ones(len(scores), np.int64), gt, np.ones(len(gt), np.int64))


def _images(seed, n=6):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        g = rng.uniform(0, 0.6, (2, 2))
        gt = np.concatenate([g, g + 0.3], axis=1)
        det = np.concatenate([gt + rng.normal(0, 0.04, gt.shape), rng.uniform(0, 0.5, (1, 4)) + [0, 0, .4, .4]])
        out.append((i, det, rng.uniform(0, 1, 3).round(2), gt))  # rounded scores -> some ties
    out.append((99, np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4))))  # no GT: skipped
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_merge_of_states_equals_one_evaluator_fed_all_images(variant):
    images = _images(3)
    whole = STAPEvaluator(96, variant)
    _feed(whole, images)
    rank0, rank1 = STAPEvaluator(96, variant), STAPEvaluator(96, variant)
    _feed(rank0, images[:3])
    _feed(rank1, images[3:] + images[:1])  # a DistributedSampler pads by repeating an image
    merged = STAPEvaluator(96, variant).merge([rank0.state(), rank1.state()])
    a, b = whole.compute(), merged.compute()
    assert 0 < a.ap < 1
    assert a.ap == b.ap
    np.testing.assert_array_equal(a.precision, b.precision)
    np.testing.assert_array_equal(a.recall, b.recall)
    assert (a.num_images, a.num_gt, a.num_detections, a.skipped_images) == \
           (b.num_images, b.num_gt, b.num_detections, b.skipped_images)
    assert STAPEvaluator.from_states([rank0.state(), rank1.state()]).compute().ap == a.ap


def test_merge_rejects_an_incompatible_state_and_add_rejects_a_repeated_image():
    ev = STAPEvaluator(96, "st20")
    with pytest.raises(ValueError, match="variant"):
        ev.merge([STAPEvaluator(96, "st25").state()])
    with pytest.raises(ValueError, match="input_size"):
        ev.merge([STAPEvaluator(64, "st20").state()])
    ev.add(1, np.zeros((0, 4)), [], [], [[0, 0, 0.5, 0.5]], [1])
    with pytest.raises(ValueError, match="already"):
        ev.add(1, np.zeros((0, 4)), [], [], [[0, 0, 0.5, 0.5]], [1])
    ev.reset()
    ev.add(1, np.zeros((0, 4)), [], [], [[0, 0, 0.5, 0.5]], [1])


# ---------------------------------------------------------------------------------------- plots


def test_save_pr_curve_writes_png_atomically(tmp_path):
    ev = STAPEvaluator(96, "st20")
    _feed(ev, _images(5))
    res = ev.compute()
    assert isinstance(res, STAPResult)
    single, both = tmp_path / "pr.png", tmp_path / "sub" / "both.png"
    save_pr_curve(res, single)
    save_pr_curve({"st20": res, "st25": res}, both)
    for path in (single, both):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["both.png", "pr.png"]
