"""ST-AP (docs/st_model.md §7): rasterization, matching, AP, the evaluator and its rank merge.

Expected values are computed by hand in the comments; box coordinates are dyadic fractions so
that the float arithmetic is exact. Post-processing is tested in test_postprocess.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ssd_mnv1.metrics import VARIANTS, STAPEvaluator, STAPResult, average_precision, save_pr_curve
from ssd_mnv1.metrics.st_ap import (iou_plus_one, rasterize, rasterize_padilla, rasterize_st25_detections,
                                    rasterize_st25_gt)
from ssd_mnv1.postprocess import Detections


def _add(ev, image_id, boxes, scores, labels, gt, gt_labels):
    """Add one image to ``ev`` from plain lists/arrays."""
    det = Detections(torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
                     torch.as_tensor(np.asarray(scores, np.float32)), torch.as_tensor(np.asarray(labels, np.int64)))
    ev.update([det], [np.asarray(gt, np.float32).reshape(-1, 4)], [np.asarray(gt_labels, np.int64)], [image_id])


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
    _add(ev, 1, norm([a1, a1, a2]), [0.9, 0.6, 0.5], [1, 1, 1], norm([a1, a2]), [1, 1])
    _add(ev, 2, norm([[50, 50, 60, 60], b1]), [0.8, 0.7], [1, 1], norm([b1]), [1])
    res = ev.compute()
    assert res.ap == pytest.approx(34 / 45)
    assert (res.num_images, res.num_gt, res.num_detections) == (2, 3, 5)


def test_no_detections_give_ap_zero():
    ap, precision, recall = average_precision([], np.zeros((0, 4)), [], {1: np.array([[0, 0, 5, 5]])})
    assert ap == 0.0 and precision.size == 0 and recall.size == 0
    ev = STAPEvaluator(64, "st20")
    _add(ev, 1, np.zeros((0, 4)), [], [], [[0.1, 0.1, 0.5, 0.5]], [1])
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
        _add(ev, 1, [[0.0, 0.0, 0.25, 0.25]], [0.9], [1], [[0.0, 0.0, 0.25, 0.25]], [1])
        _add(ev, 2, np.zeros((0, 4)), [], [], [[0.25, 0.25, 0.5, 0.5]], [1])
        res = ev.compute()
        assert res.ap == pytest.approx(0.5), variant
        assert (res.num_images, res.num_gt, res.num_detections, res.skipped_images) == (2, 2, 1, 0)


def test_image_without_gt_is_left_out_and_counted():
    ev = STAPEvaluator(64, "st20")
    _add(ev, 1, [[0.25, 0.25, 0.5, 0.5]], [0.5], [1], [[0.25, 0.25, 0.5, 0.5]], [1])
    # a confident detection on an image without GT would be an FP if the image were evaluated
    _add(ev, 2, [[0.0, 0.0, 0.5, 0.5]], [0.99], [1], np.zeros((0, 4)), np.zeros(0, np.int64))
    res = ev.compute()
    assert res.ap == 1.0
    assert (res.num_images, res.skipped_images, res.num_detections) == (1, 1, 1)


def test_evaluator_ties_go_by_ascending_image_id_whatever_the_insertion_order():
    # Both images have one GT; equal scores. Image 3 (added last) has the miss -> P = [0, 1/2].
    ev = STAPEvaluator(64, "st20")
    _add(ev, 5, [[0.0, 0.0, 0.25, 0.25]], [0.5], [1], [[0.0, 0.0, 0.25, 0.25]], [1])
    _add(ev, 3, [[0.5, 0.5, 0.75, 0.75]], [0.5], [1], [[0.0, 0.0, 0.25, 0.25]], [1])
    res = ev.compute()
    np.testing.assert_allclose(res.precision, [0.0, 0.5])
    np.testing.assert_allclose(res.recall, [0.0, 0.5])
    assert res.ap == pytest.approx(0.25)
    assert res.mean_precision == pytest.approx(0.25) and res.mean_recall == pytest.approx(0.25)


def test_ap_is_the_mean_over_classes_present_in_gt():
    ev = STAPEvaluator(64, "st20")
    box = [[0.0, 0.0, 0.25, 0.25]]
    _add(ev, 1, box + [[0.5, 0.5, 0.75, 0.75]], [0.9, 0.8], [1, 2], box + box, [1, 2])
    # class 3 only in detections: not an evaluated class
    _add(ev, 2, box, [0.7], [3], box, [1])
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


def test_bad_variant_is_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match="st20, st25"):
        STAPEvaluator(64, "voc")


# ----------------------------------------------------------------------------------- distributed


def _feed(ev, images):
    for image_id, det, scores, gt in images:
        _add(ev, image_id, det, scores, np.ones(len(scores), np.int64), gt, np.ones(len(gt), np.int64))


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


def _assert_same_result(a: STAPResult, b: STAPResult) -> None:
    assert a.ap == b.ap
    np.testing.assert_array_equal(a.precision, b.precision)
    np.testing.assert_array_equal(a.recall, b.recall)
    assert (a.num_images, a.num_gt, a.num_detections, a.skipped_images) == \
           (b.num_images, b.num_gt, b.num_detections, b.skipped_images)


@pytest.mark.parametrize("variant", VARIANTS)
def test_merged_rank_states_equal_one_evaluator_fed_all_images_in_any_order(variant):
    images = _images(3)
    whole = STAPEvaluator(96, variant)
    _feed(whole, images)
    rank0, rank1 = STAPEvaluator(96, variant), STAPEvaluator(96, variant)
    _feed(rank0, images[3:] + images[:1])  # a DistributedSampler pads by repeating an image
    _feed(rank1, images[:3])
    expected = whole.compute()
    assert 0 < expected.ap < 1
    for first, second in ((rank0, rank1), (rank1, rank0)):
        merged = copy.deepcopy(first)
        merged.merge_state(second)
        _assert_same_result(merged.compute(), expected)


def _rank_worker(rank: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    images = _images(3)
    results = {}
    # interleaved with padding (image 0 twice); rank 1 sees only an image without GT; rank 1 sees nothing
    for variant in VARIANTS:
        for split in ((images[0::2], images[1::2] + images[:1]), (images[:-1], images[-1:]), (images, [])):
            ev = STAPEvaluator(96, variant)
            _feed(ev, split[rank])
            results.setdefault(variant, []).append(ev.compute())
    torch.save(results, f"{out}/{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_compute_the_single_process_result(tmp_path):
    torch.multiprocessing.spawn(_rank_worker, args=(f"file://{tmp_path}/pg", str(tmp_path)), nprocs=2)
    for variant in VARIANTS:
        whole = STAPEvaluator(96, variant)
        _feed(whole, _images(3))
        expected = whole.compute()
        for rank in range(2):
            for result in torch.load(tmp_path / f"{rank}.pt", weights_only=False)[variant]:
                _assert_same_result(result, expected)


def test_add_rejects_a_repeated_image_until_reset():
    ev = STAPEvaluator(96, "st20")
    _add(ev, 1, np.zeros((0, 4)), [], [], [[0, 0, 0.5, 0.5]], [1])
    with pytest.raises(ValueError, match="already"):
        _add(ev, 1, np.zeros((0, 4)), [], [], [[0, 0, 0.5, 0.5]], [1])
    ev.reset()
    _add(ev, 1, np.zeros((0, 4)), [], [], [[0, 0, 0.5, 0.5]], [1])


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
