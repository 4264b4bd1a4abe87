"""Box-for-box detection agreement between two models (the export ledger's parity measure)."""

import pytest
import torch

from ssd_mnv1.metrics import detection_agreement
from ssd_mnv1.postprocess import Detections


def _img(boxes, scores, labels=None) -> Detections:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.ones(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return Detections(boxes, torch.tensor(scores, dtype=torch.float32), labels)


def test_identical_detections_agree_fully_and_empty_images_count_as_agreeing():
    a = [_img([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [0.9, 0.8]), _img([], [])]
    assert detection_agreement(a, a).fraction == 1.0


def test_a_moved_box_below_the_iou_threshold_and_an_extra_box_both_count_against():
    a = [_img([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [0.9, 0.8])]
    b = [_img([[0, 0, 0.5, 0.5], [0.7, 0.7, 1, 1], [0, 0.6, 0.2, 0.9]], [0.9, 0.8, 0.1])]
    result = detection_agreement(a, b)
    assert (result.matched, result.boxes_a, result.boxes_b) == (1, 2, 3)
    assert result.fraction == pytest.approx(1 / 3)


def test_matching_is_one_to_one_and_within_a_class():
    a = [_img([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.49]], [0.9, 0.8])]
    b = [_img([[0, 0, 0.5, 0.5]], [0.9])]
    assert detection_agreement(a, b).matched == 1
    c = [_img([[0, 0, 0.5, 0.5]], [0.9], labels=[2])]
    assert detection_agreement(b, c).matched == 0


def test_lists_of_different_lengths_are_rejected():
    with pytest.raises(ValueError, match="images"):
        detection_agreement([_img([], [])], [])


def test_zero_area_boxes_are_left_out_of_the_comparison():
    a = [_img([[0, 0, 0.5, 0.5], [1, 0.2, 1, 0.4]], [0.9, 0.5])]
    b = [_img([[0, 0, 0.5, 0.5]], [0.9])]
    result = detection_agreement(a, b)
    assert (result.matched, result.boxes_a, result.boxes_b) == (1, 1, 1)
