"""The C deployment bundle (``export --to c``) and its post-processor (``ssd_mnv1/c``).

The C compiles warning-free as C99; run through ctypes (``ssd_mnv1.postprocess_c``) it gives the
Python deploy post-processing's detections exactly (boxes, scores, labels, order), on random outputs
built to stress it (overlapping boxes, int8 score ties, several classes, the cap) and on real ones;
a bundle written from the tiny ``--mcu`` export says the file's numbers, and a C program built from
it gives, on TFLM's outputs, the Python post-processing's detections of the same outputs.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from ssd_mnv1.postprocess import postprocess
from ssd_mnv1.postprocess_c import C_DIR, postprocess_c

STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) on PATH")


def assert_same(py, c):
    assert len(py) == len(c)
    for a, b in zip(py, c):
        assert len(a) == len(b), (len(a), len(b))
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels)


def _outputs(rng, images: int, num_anchors: int, classes: int, *, clusters: int = 0, int8_scores: bool = True):
    """Random SSD outputs; ``clusters`` > 0 puts every anchor near one of that many boxes (heavy
    overlap); int8 scores are multiples of 1/256, as the int8 models' (many ties)."""
    logits = rng.normal(0.0, 2.5, (images, num_anchors, 1 + classes))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    if int8_scores:
        probs = np.round(probs * 256) / 256
    if clusters:
        centres = rng.uniform(0.1, 0.9, (clusters, 2))[rng.integers(0, clusters, num_anchors)]
        half = rng.uniform(0.05, 0.15, (num_anchors, 2))
        anchors = np.concatenate([centres - half, centres + half], axis=1)
    else:
        xy = rng.uniform(-0.1, 0.9, (num_anchors, 2))
        anchors = np.concatenate([xy, xy + rng.uniform(0.02, 0.4, (num_anchors, 2))], axis=1)
    offsets = rng.normal(0.0, 0.1, (images, num_anchors, 4))
    return probs.astype(np.float32), offsets.astype(np.float32), anchors.astype(np.float32)


@needs_cc
@pytest.mark.parametrize("compiler", ["cc", "clang"])
def test_the_c_compiles_warning_free_as_c99(compiler, tmp_path):
    if shutil.which(compiler) is None:
        pytest.skip(f"no {compiler}")
    run = subprocess.run([compiler, *STRICT, "-Wconversion", "-Wshadow", "-c", str(C_DIR / "ssd_postprocess.c"),
                          "-o", str(tmp_path / "pp.o")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@needs_cc
@pytest.mark.parametrize("classes, clusters", [(1, 0), (1, 12), (3, 6), (2, 0)])
def test_c_equals_python_deploy_on_random_outputs(classes, clusters):
    rng = np.random.default_rng(classes * 100 + clusters)
    scores, offsets, anchors = _outputs(rng, 3, 3830, classes, clusters=clusters)
    py, c = postprocess(scores, offsets, anchors), postprocess_c(scores, offsets, anchors)
    assert_same(py, c)
    assert all(len(d) == 100 for d in py) if not clusters else all(len(d) > 0 for d in py)  # spread: the cap
    for kwargs in ({"score_threshold": 0.3, "max_detections": 7}, {"iou_threshold": 0.3, "max_detections": 1000},
                   {"score_threshold": 0.9}):
        assert_same(postprocess(scores, offsets, anchors, **kwargs), postprocess_c(scores, offsets, anchors, **kwargs))


@needs_cc
def test_c_with_more_than_a_thousand_candidates_and_float_scores():
    # above 1,000 boxes torchvision's batched NMS merged classes with an unstable sort; deploy no longer does
    rng = np.random.default_rng(7)
    scores, offsets, anchors = _outputs(rng, 2, 6825, 3, clusters=40, int8_scores=False)
    kwargs = {"score_threshold": 0.05, "max_detections": 2000}
    py = postprocess(scores, offsets, anchors, **kwargs)
    assert_same(py, postprocess_c(scores, offsets, anchors, **kwargs))
    assert (scores[0, :, 1:] > 0.05).sum() > 1000 and len(py[0]) > 100


@needs_cc
def test_int8_outputs_give_the_float_outputs_detections():
    """The API's int8 path: int8 codes with scale and zero point, dequantized as TFLM's DEQUANTIZE."""
    rng = np.random.default_rng(3)
    q_scores = rng.integers(-128, 128, (2, 3830, 3)).astype(np.int8)
    q_offsets = rng.integers(-128, 128, (2, 3830, 4)).astype(np.int8)
    q = {"scores": (np.float32(1 / 256), -128), "offsets": (np.float32(0.0063416194), -25)}
    deq = {k: (np.float64(s) * (v.astype(np.float64) - z)).astype(np.float32)
           for (k, (s, z)), v in zip(q.items(), (q_scores, q_offsets))}
    _, _, anchors = _outputs(rng, 1, 3830, 2, clusters=10)
    from_float = postprocess_c(deq["scores"], deq["offsets"], anchors)
    assert_same(from_float, postprocess_c(q_scores, q_offsets, anchors, quantization=q))
    assert_same(postprocess(deq["scores"], deq["offsets"], anchors), from_float)
    with pytest.raises(ValueError, match="scale, zero point"):
        postprocess_c(q_scores, q_offsets, anchors)


def test_no_compiler_is_one_error_naming_the_fix(monkeypatch):
    from ssd_mnv1 import postprocess_c as module

    monkeypatch.setattr(module, "_library", None)
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    with pytest.raises(ValueError, match="no C compiler 'no-such-compiler-xyz' on PATH: install one"):
        module.load_library()


@needs_cc
@pytest.mark.reference
def test_c_equals_python_on_st_model_outputs_of_val_images(reference_dir, coco_person_val):
    from ssd_mnv1.evaluation import evaluate
    from ssd_mnv1.data import open_dataset
    from ssd_mnv1.runners import open_runner
    from ssd_mnv1.zoo import st_files

    runner = open_runner(st_files(reference_dir, 224).h5)
    dataset = open_dataset(coco_person_val)
    results = {name: evaluate(runner, dataset, ("st20",), limit=8, workers=0, progress=False, postprocessing=name)
               for name in ("python", "c")}
    assert results["python"].st_ap == results["c"].st_ap and results["c"].st_ap["st20"] > 0
    from ssd_mnv1.evaluation import resize_all

    scores, offsets, anchors = runner(resize_all(dataset, 224, workers=0, progress=False, limit=8))
    for threshold in (0.5, 0.01):  # the deploy recipe, and one that reaches the cap
        kwargs = {"score_threshold": threshold}
        py = postprocess(scores, offsets, anchors, **kwargs)
        assert_same(py, postprocess_c(scores, offsets, anchors, **kwargs))
    assert any(len(d) == 100 for d in py)


def test_export_to_c_needs_mcu(tmp_path):
    from ssd_mnv1.export.pipeline import export

    with pytest.raises(ValueError, match="--to c .* loads only the --mcu export: add --mcu"):
        export("never-read.ckpt", tmp_path, ("c",), calib=tmp_path)


@pytest.mark.reference
def test_a_dynamic_batch_file_gets_no_bundle(reference_dir, tmp_path):
    from ssd_mnv1.export.c_bundle import write_c_bundle
    from ssd_mnv1.zoo import st_files

    with pytest.raises(ValueError, match="not an --mcu file .*TILE.*--to c --mcu"):
        write_c_bundle(st_files(reference_dir, 224).int8_tflite, tmp_path)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------- a bundle of an --mcu export

MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
#include "model_anchors.h"
#include "model_config.h"
#include "model_data.h"
#include "ssd_postprocess.h"

static float scores[MODEL_NUM_ANCHORS * MODEL_NUM_SCORE_COLUMNS];
static float offsets[MODEL_NUM_ANCHORS * 4];
static ssd_pp_workspace workspace;
static ssd_pp_detection detections[SSD_PP_MAX_DETECTIONS];

int main(int argc, char **argv)
{
    ssd_pp_config config;
    ssd_pp_tensor s = ssd_pp_float_tensor(scores), o = ssd_pp_float_tensor(offsets);
    ssd_pp_tensor a = model_anchors_tensor();
    FILE *f;
    int32_t i, n;
    if (argc != 3 || (f = fopen(argv[1], "rb")) == NULL) return 2;
    if (fread(scores, sizeof scores, 1, f) != 1 || fread(offsets, sizeof offsets, 1, f) != 1) return 3;
    fclose(f);
    ssd_pp_default_config(&config);
    config.score_threshold = (float)atof(argv[2]);
    n = ssd_postprocess(&s, &o, &a, MODEL_NUM_ANCHORS, MODEL_NUM_SCORE_COLUMNS, &config, &workspace, detections,
                        SSD_PP_MAX_DETECTIONS, NULL);
    printf("%u\n", model_data_len);
    for (i = 0; i < n; ++i) {
        const ssd_pp_detection *d = &detections[i];
        printf("%d %.9g %.9g %.9g %.9g %.9g\n", (int)d->class_id, d->score, d->x1, d->y1, d->x2, d->y2);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def bundle(tiny_mcu_export, tmp_path_factory):
    pytest.importorskip("tflite_micro")
    from ssd_mnv1.export.c_bundle import write_c_bundle

    _, result, _ = tiny_mcu_export
    return result.files["tflite-int8"], write_c_bundle(result.files["tflite-int8"], tmp_path_factory.mktemp("bundle"),
                                                       log=lambda *_: None)


def _defines(header: str) -> dict[str, str]:
    return dict(re.findall(r"^#define (\w+) (.+?)(?: /\*.*)?$", header, flags=re.M))


@pytest.mark.slow
def test_bundle_has_its_files_and_the_files_numbers(bundle):
    from ssd_mnv1.export.c_bundle import BUNDLE_FILES, arena_with_margin
    from ssd_mnv1.runners import TFLMRunner

    path, info = bundle
    assert info.folder.name == "tiny_int8_mcu_bundle"
    assert sorted(p.name for p in info.folder.iterdir()) == sorted(BUNDLE_FILES)
    d = _defines((info.folder / "model_config.h").read_text())
    assert d["MODEL_NUM_ANCHORS"] == "3830" and d["MODEL_NUM_CLASSES"] == "1" and d["MODEL_INPUT_SIZE"] == "192"
    assert d["MODEL_CLASS_NAMES_INIT"] == '{ "person" }' and d["MODEL_INPUT_UINT8"] == "1"
    assert np.float32(float(d["MODEL_INPUT_SCALE"].rstrip("f"))) == np.float32(1 / 127.5)
    assert d["MODEL_INPUT_ZERO_POINT"] == "(127)"
    assert d["MODEL_SCORES_INT8_SCALE"] == "0.00390625f" and d["MODEL_SCORES_INT8_ZERO_POINT"] == "(-128)"
    assert [d[f"MODEL_OUTPUT_{k}"] for k in ("SCORES", "OFFSETS", "ANCHORS")] == ["0", "1", "2"]
    report = TFLMRunner(path).arena_report()
    assert int(d["MODEL_ARENA_MEASURED_BYTES"]) == report.arena_bytes == info.arena_measured
    assert int(d["MODEL_ARENA_BYTES"]) == arena_with_margin(report.arena_bytes) >= report.arena_bytes + 4096
    assert int(d["MODEL_FLATBUFFER_BYTES"]) == path.stat().st_size
    resolver = (info.folder / "model_op_resolver.h").read_text()
    assert f"MODEL_OP_COUNT {len(info.ops)}" in resolver and resolver.count("resolver.Add") == len(info.ops)
    assert "AddConv2D()" in resolver and "AddDepthwiseConv2D()" in resolver


@pytest.mark.slow
@needs_cc
def test_a_program_built_from_the_bundle_gives_pythons_detections_of_tflm_outputs(bundle, coco_person_val, tmp_path):
    from ssd_mnv1.data import open_dataset
    from ssd_mnv1.evaluation import resize_all
    from ssd_mnv1.runners import TFLMRunner

    path, info = bundle
    (tmp_path / "main.c").write_text(MAIN)
    sources = [str(info.folder / n) for n in ("model_anchors.c", "model_data.c", "ssd_postprocess.c")]
    run = subprocess.run(["cc", *STRICT, "-I", str(info.folder), str(tmp_path / "main.c"), *sources,
                          "-o", str(tmp_path / "main")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    images = resize_all(open_dataset(coco_person_val), 192, workers=0, progress=False, limit=3)
    runner = TFLMRunner(path)
    for image in images:
        scores, offsets, anchors = runner(image[None])
        (tmp_path / "out.bin").write_bytes(scores.tobytes() + offsets.tobytes())
        for threshold in ("0.5", "0.0"):  # deploy, and every anchor a candidate (the cap reached)
            out = subprocess.run([str(tmp_path / "main"), str(tmp_path / "out.bin"), threshold], capture_output=True,
                                 text=True, check=True).stdout.split("\n")
            assert int(out[0]) == path.stat().st_size
            rows = np.array([[float(v) for v in line.split()] for line in out[1:] if line], dtype=np.float64)
            (det,) = postprocess(scores, offsets, anchors, score_threshold=float(threshold))
            assert len(rows) == len(det) and (threshold == "0.5" or len(det) == 100)
            if len(det):
                assert np.array_equal(rows[:, 0], det.labels.numpy())
                assert np.array_equal(rows[:, 1].astype(np.float32), det.scores.numpy())
                assert np.array_equal(rows[:, 2:].astype(np.float32), det.boxes.numpy())


@pytest.mark.slow
@needs_cc
def test_evaluate_tflm_with_c_postprocess_scores_as_python(bundle, coco_person_val, capsys):
    from ssd_mnv1.evaluate import main

    path, _ = bundle
    values = {}
    for name in ("python", "c"):
        assert main([str(path), "--data", str(coco_person_val), "--runtime", "tflm", "--postprocess", name,
                     "--limit", "8", "--workers", "0", "--metric", "all"]) == 0
        values[name] = capsys.readouterr().out.split("\n", 1)[1]
    assert values["python"] == values["c"] and "ST-AP" in values["c"]
