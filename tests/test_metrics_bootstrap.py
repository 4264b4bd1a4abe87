"""Bootstrap intervals of ST-AP: a resample's AP is the evaluator's AP on the resampled images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssd_mnv1.evaluation import paired_st_ap, paired_st_ap_table
from ssd_mnv1.metrics import STAPEvaluator
from ssd_mnv1.metrics.bootstrap import bootstrap_comparison, image_weights, resampled_ap
from ssd_mnv1.postprocess import Detections


def _scene(rng, n_gt: int, n_det: int, labels: int = 1):
    """GT boxes and noisy detections of them plus clutter, normalized, continuous scores."""
    gt = rng.uniform(0.05, 0.55, (n_gt, 2))
    gt = np.concatenate([gt, gt + rng.uniform(0.1, 0.4, (n_gt, 2))], axis=1)
    hits = gt[rng.integers(0, n_gt, n_det)] + rng.normal(0.0, 0.04, (n_det, 4))
    clutter = rng.uniform(0.0, 0.6, (n_det, 2))
    clutter = np.concatenate([clutter, clutter + 0.2], axis=1)
    is_hit = rng.random(n_det) < 0.6
    boxes = np.where(is_hit[:, None], hits, clutter).clip(0.0, 1.0)
    scores = np.where(is_hit, rng.uniform(0.3, 1.0, n_det), rng.uniform(0.0, 0.7, n_det))  # informative
    return (gt.astype(np.float32), rng.integers(1, labels + 1, n_gt), boxes.astype(np.float32),
            scores.astype(np.float32), rng.integers(1, labels + 1, n_det))


def _evaluate(scenes, counts=None):
    """ST-AP result of ``scenes``, each image added ``counts[i]`` times under fresh ids."""
    ev = STAPEvaluator(192, "st20", sync_on_compute=False)
    next_id = 0
    for i, (gt, gt_labels, boxes, scores, labels) in enumerate(scenes):
        for _ in range(1 if counts is None else int(counts[i])):
            det = Detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels))
            ev.update([det], [gt], [gt_labels], [next_id])
            next_id += 1
    return ev.compute()


@pytest.mark.parametrize("labels", [1, 2])
def test_resampled_ap_equals_the_evaluator_on_the_resampled_images(labels):
    rng = np.random.default_rng(3)
    scenes = [_scene(rng, int(rng.integers(1, 5)), int(rng.integers(0, 12)), labels) for _ in range(25)]
    result = _evaluate(scenes)
    ones = np.ones((1, len(scenes)))
    assert resampled_ap(result, ones)[0] == pytest.approx(result.ap, abs=1e-12)
    weights = image_weights(len(scenes), samples=5, seed=1)
    for row in weights:  # images drawn 0, 1, 2, ... times: the evaluator sees each copy as an image
        assert resampled_ap(result, row[None])[0] == pytest.approx(_evaluate(scenes, row).ap, abs=1e-9)


def test_paired_interval_of_a_model_with_itself_is_zero_and_a_worse_model_is_resolved():
    rng = np.random.default_rng(5)
    scenes = [_scene(rng, 3, 10) for _ in range(120)]
    worse = [(gt, gl, boxes, np.where(rng.random(len(s)) < 0.5, rng.random(len(s)), s).astype(np.float32), lab)
             for gt, gl, boxes, s, lab in scenes]  # half the scores replaced by noise
    a, b = _evaluate(scenes), _evaluate(worse)
    same = bootstrap_comparison([a, a], samples=200)
    own, same_again, none = same.interval(0), same.interval(1), same.difference(0, 1)
    assert none.low == none.high == 0.0
    assert own == same_again and own.low < own.value < own.high  # one model's AP does vary over resamples
    cmp = bootstrap_comparison([a, b], samples=200)
    ap_a, diff = cmp.interval(0), cmp.difference(0, 1)
    assert diff.value == pytest.approx(100 * (a.ap - b.ap), abs=1e-3)
    assert 0.0 < diff.low < diff.value < diff.high
    assert diff.high - diff.low < ap_a.high - ap_a.low  # pairing: the difference is known better than an AP


def test_bootstrap_comparison_refuses_results_over_different_images():
    rng = np.random.default_rng(0)
    scenes = [_scene(rng, 2, 5) for _ in range(6)]
    with pytest.raises(ValueError, match="different images"):
        bootstrap_comparison([_evaluate(scenes), _evaluate(scenes[:5])])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_comparison([_evaluate(scenes), _evaluate(scenes)], confidence=95)


def test_paired_st_ap_gives_every_pairwise_difference_with_an_interval(reference_dir, coco_person_val):
    """:func:`paired_st_ap` (``bench/paired_ap.py``) on ST's 192 float model (twice: a difference that
    is exactly 0) and its int8 file under two kernel sets, on real images."""
    from ssd_mnv1.zoo import st_files

    files = st_files(reference_dir, 192, must_exist=True)
    logged = []
    report = paired_st_ap([str(files.h5), str(files.h5), str(files.int8_tflite), f"{files.int8_tflite}@builtin"],
                          coco_person_val, limit=40, samples=300, log=logged.append)
    assert report["images"] == 40 and len(report["models"]) == 4 and len(report["differences"]) == 6
    assert len(logged) == 4 and logged[2].startswith(f"  {files.int8_tflite.name}@xnnpack: ST-AP ")
    models = {m["model"]: m for m in report["models"]}
    assert all(m["low"] <= m["value"] <= m["high"] for m in models.values())
    itself = report["differences"][0]
    assert (itself["value"], itself["low"], itself["high"], itself["resolved"]) == (0.0, 0.0, 0.0, False)
    int8 = next(d for d in report["differences"] if d["model"].endswith("int8.tflite@xnnpack") and d["minus"] ==
                files.h5.name)
    assert int8["value"] == pytest.approx(models[int8["model"]]["value"] - models[files.h5.name]["value"], abs=2e-4)
    assert int8["low"] <= int8["value"] <= int8["high"]
    table = paired_st_ap_table(report)
    assert len(table) == 3 + 4 + 2 + 6 and table[1].startswith(f"ST-AP 2.0 on {coco_person_val}: 40 images; 95% ")
    last = report["differences"][-1]
    assert table[-1].startswith(last["model"]) and table[-1].endswith("yes" if last["resolved"] else "no")


@pytest.mark.parametrize("spec, message", [("model.tflite@fp16", "@xnnpack, @builtin, @reference"),
                                           ("model.h5@builtin", "applies to .tflite and .onnx"),
                                           ("missing.tflite", "no such model file")])
def test_paired_st_ap_names_a_bad_model_spec(spec, message, tmp_path):
    name = spec.partition("@")[0]
    if not name.startswith("missing"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        paired_st_ap([str(tmp_path / spec), str(tmp_path / spec)], tmp_path / "data")
    with pytest.raises(ValueError, match="at least two models"):
        paired_st_ap([str(tmp_path / spec)], tmp_path / "data")
