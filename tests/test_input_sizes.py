"""Input sizes beyond ST's three: the rule in ssd_mnv1.specs, the models it builds, and its errors."""

from __future__ import annotations

import pytest
import torch

from ssd_mnv1 import build_model
from ssd_mnv1.anchors import generate_anchors
from ssd_mnv1.checkpoint import load_checkpoint, save_checkpoint
from ssd_mnv1.loading import load_weights
from ssd_mnv1.specs import (ST_ANCHOR_SIZES, ST_INPUT_SIZES, ST_SPECS, SUPPORTED_INPUT_SIZES, derive_spec,
                            resolution_spec)


@pytest.mark.parametrize("size", ST_INPUT_SIZES)
def test_rule_reproduces_st_specs_exactly(size):
    assert derive_spec(size) == ST_SPECS[size]


def test_supported_sizes_are_the_multiples_of_32_from_128_to_512():
    assert SUPPORTED_INPUT_SIZES == tuple(range(128, 513, 32))
    assert set(ST_INPUT_SIZES) <= set(SUPPORTED_INPUT_SIZES)


@pytest.mark.parametrize("size", SUPPORTED_INPUT_SIZES)
def test_every_size_builds_a_pyramid_whose_maps_match_the_spec(size):
    spec = derive_spec(size)
    levels = spec.level_sizes
    assert levels[-1] == 1 and levels[-2] in (2, 3)
    assert all(levels[i] == 2 * levels[i + 1] for i in range(len(levels) - 2))
    # C5 / C11 / C13 (S/8, S/16, S/32) padded up to the first three levels, never cropped
    for stride, level, pad in zip((8, 16, 32), levels[:3], spec.lateral_pads):
        assert size // stride + pad[0] + pad[1] == level == size // stride + pad[2] + pad[3]
    assert spec.num_extras == 2 * (len(levels) - 4)
    assert spec.top_head_kernel == (3 if levels[-2] == 3 else 1)

    model = build_model(input_size=size, class_names=["a", "b", "c"]).eval()
    seen = []
    hook = model.head.register_forward_pre_hook(lambda _m, args: seen.extend(p.shape[-1] for p in args[0]))
    with torch.no_grad():
        scores, offsets, anchors = model(torch.zeros(2, 3, size, size))
    hook.remove()
    assert tuple(seen) == levels
    assert scores.shape == (2, spec.num_anchors, 4) and offsets.shape == anchors.shape == (2, spec.num_anchors, 4)
    assert torch.equal(anchors[0], generate_anchors(spec))


@pytest.mark.parametrize("size", SUPPORTED_INPUT_SIZES)
def test_anchor_sizes_count_st_sizes_from_the_top_and_halve_below_them(size):
    spec = derive_spec(size)
    from_top = spec.anchor_sizes[::-1]
    st_from_top = ST_ANCHOR_SIZES[::-1]
    assert from_top[:6] == st_from_top[:len(from_top[:6])]
    if len(from_top) == 7:
        assert from_top[6] == (0.05, 0.08)
    # the finest anchors of 512 are the finest of 256 in pixels
    if size == 512:
        assert spec.anchor_sizes[0][0] * 512 == pytest.approx(ST_ANCHOR_SIZES[0][0] * 256)


@pytest.mark.parametrize("bad, words", [
    (300, ["300", "multiple of 32", "128", "512"]),
    (96, ["96", "multiple of 32"]),
    (544, ["544", "128 to 512"]),
    (224.5, ["224.5", "integer"]),
    ("256x192", ["non-square"]),
    ((256, 192), ["non-square"]),
])
def test_unsupported_sizes_are_one_clear_error(bad, words):
    with pytest.raises(ValueError) as err:
        resolution_spec(bad)
    for word in words:
        assert word in str(err.value)
    with pytest.raises(ValueError):
        build_model(input_size=bad)


def test_checkpoint_keeps_class_names_and_size(tmp_path):
    model = build_model(input_size=160, class_names=["cat", "dog", "bird"])
    path = save_checkpoint(model, tmp_path / "m.ckpt")
    loaded = load_checkpoint(path)
    assert loaded.class_names == ("cat", "dog", "bird") and loaded.input_size == 160
    x = torch.rand(1, 3, 160, 160) * 2 - 1
    with torch.no_grad():
        for a, b in zip(model.eval()(x), loaded.eval()(x)):
            assert torch.equal(a, b)


def test_checkpoint_without_class_names_is_a_person_detector(tmp_path):
    model = build_model(input_size=192)
    path = save_checkpoint(model, tmp_path / "old.ckpt")
    ckpt = torch.load(path, weights_only=False)
    del ckpt["hyper_parameters"]["class_names"]
    torch.save(ckpt, path)
    assert load_checkpoint(path).class_names == ("person",)


def test_weights_with_other_classes_are_refused_naming_both_lists(tmp_path):
    path = save_checkpoint(build_model(input_size=160, class_names=["cat", "dog"]), tmp_path / "m.ckpt")
    with pytest.raises(ValueError) as err:
        load_weights(build_model(input_size=160, class_names=["dog", "cat"]), path)
    assert "['cat', 'dog']" in str(err.value) and "['dog', 'cat']" in str(err.value)
    load_weights(build_model(input_size=160, class_names=["cat", "dog"]), path)  # same list: fine


def test_class_names_and_num_classes_must_agree():
    assert build_model(input_size=128, num_classes=2).class_names == ("class1", "class2")
    with pytest.raises(ValueError, match="num_classes 2 does not match"):
        build_model(input_size=128, num_classes=2, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="duplicates"):
        build_model(input_size=128, class_names=["a", "a"])


@pytest.mark.parametrize("size", [160, 320])
def test_qat_model_at_a_new_size_runs_and_round_trips(tmp_path, size):
    from ssd_mnv1.quantization import calibrate, prepare_qat

    model = prepare_qat(build_model(input_size=size, class_names=["a", "b", "c"]))
    calibrate(model, [torch.rand(2, 3, size, size) * 2 - 1])
    path = save_checkpoint(model, tmp_path / "qat.ckpt")
    loaded = load_checkpoint(path)
    assert loaded.qat and loaded.class_names == ("a", "b", "c")
    x = torch.rand(1, 3, size, size) * 2 - 1
    with torch.no_grad():
        a, b = model.eval()(x), loaded.eval()(x)
    assert a[0].shape == (1, derive_spec(size).num_anchors, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
