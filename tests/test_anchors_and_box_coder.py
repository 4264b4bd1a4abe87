import math

import numpy as np
import pytest
import torch

from ssd_mnv1 import decode, encode, generate_anchors, resolution_spec


@pytest.mark.parametrize("size, expected", [(192, 3830), (224, 6825), (256, 6825)])
def test_anchor_count_matches_st(size, expected):
    assert generate_anchors(size).shape == (expected, 4)
    assert resolution_spec(size).num_anchors == expected


def test_first_location_anchors_at_224_follow_st_order_and_sizes():
    a = generate_anchors(224).double()
    c = 0.5 / 32
    s0, s1 = 0.10, 0.16
    wh = [(s0, s0), (s0 * math.sqrt(2), s0 / math.sqrt(2)), (s0 * math.sqrt(0.5), s0 / math.sqrt(0.5)),
          (s0 * math.sqrt(1 / 3), s0 / math.sqrt(1 / 3)), (s1, s1)]
    expected = torch.tensor([[c - w / 2, c - h / 2, c + w / 2, c + h / 2] for w, h in wh], dtype=torch.float64)
    assert torch.allclose(a[:5], expected.float().double(), atol=0, rtol=0)


def test_anchor_index_is_level_row_column_anchor():
    a = generate_anchors(192)
    # level 0 is 24x24; the anchor of row 1, column 2, anchor 0 sits at index (1*24 + 2)*5.
    box = a[(1 * 24 + 2) * 5]
    assert torch.allclose((box[:2] + box[2:]) / 2, torch.tensor([2.5 / 24, 1.5 / 24]))
    # last anchor: 1x1 level, square s1 = 0.98, centred, unclipped range elsewhere
    assert torch.allclose(a[-1], torch.tensor([0.01, 0.01, 0.99, 0.99]))
    assert a.min() < 0 and a.max() > 1  # ST does not clip anchors


@pytest.mark.parametrize("size", [192, 224, 256])
def test_anchors_equal_st_constants(reference_dir, size):
    ref = np.load(reference_dir / "test_vectors" / f"ref_outputs_{size}.npz")["float_anchors"]
    assert np.array_equal(generate_anchors(size).numpy(), ref)


def test_box_coder_round_trip():
    g = torch.Generator().manual_seed(0)
    anchors = generate_anchors(224)
    boxes = torch.rand(anchors.shape[0], 4, generator=g)
    boxes = torch.cat([boxes[:, :2] * 0.5, boxes[:, :2] * 0.5 + 0.1 + boxes[:, 2:] * 0.4], dim=1)
    assert torch.allclose(decode(encode(boxes, anchors), anchors), boxes, atol=1e-6)


def test_box_coder_uses_corner_offsets_normalized_by_anchor_size():
    anchor = torch.tensor([[0.2, 0.2, 0.6, 0.4]])  # w 0.4, h 0.2
    gt = torch.tensor([[0.3, 0.1, 0.5, 0.5]])
    assert torch.allclose(encode(gt, anchor), torch.tensor([[0.25, -0.5, -0.25, 0.5]]))
