import torch

from ssd_mnv1 import postprocess


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
