"""The ``--mcu`` export in TensorFlow Lite Micro (the ``tflite-micro`` package, in the dev extra):
it loads and runs, equals LiteRT's reference kernels bit for bit, and is sized by TFLM's own
allocator; a file TFLM cannot load gives one error naming the op.

One tiny ``--mcu`` export (conftest ``tiny_mcu_export``); ST's files where ../shared has them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssd_mnv1.zoo import st_files

SIZE = 192
NA = 3830
#: The ops of the int8 file (the issue's list, less ST's batch ops), all of them TFLM builtins.
TFLM_OPS = {"ADD", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "MEAN", "PAD", "QUANTIZE",
            "RESHAPE", "RESIZE_BILINEAR", "SOFTMAX"}


@pytest.fixture(scope="module")
def mcu(tiny_mcu_export):
    return tiny_mcu_export


@pytest.fixture(scope="module")
def int8_path(mcu):
    return mcu[1].files["tflite-int8"]


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _real_images(folder: Path, n: int) -> np.ndarray:
    from ssd_mnv1.preprocess import load_image, resize

    files = sorted((folder / "images").iterdir())[:n]
    return np.stack([resize(load_image(f), SIZE) for f in files])


@pytest.mark.slow
def test_mcu_file_has_st_contract_with_a_static_batch_and_only_tflm_ops(mcu, int8_path):
    from ssd_mnv1.export.tflite_edit import BATCH_OPS, op_list
    from ssd_mnv1.runners import make_interpreter

    _, result, _ = mcu
    assert result.mcu and int8_path.name == "tiny_int8_mcu.tflite"
    assert result.files["tflite-fp32"].name == "tiny_float32_mcu.tflite"
    assert result.tflm_arena_bytes > 0  # the export loaded and ran it in TFLM
    it = make_interpreter(int8_path)
    (inp,) = it.get_input_details()
    assert inp["dtype"] == np.uint8 and list(inp["shape_signature"]) == [1, SIZE, SIZE, 3]
    assert np.isclose(inp["quantization"][0], 1 / 127.5) and inp["quantization"][1] == 127
    outs = it.get_output_details()
    assert [list(o["shape_signature"]) for o in outs] == [[1, NA, 2], [1, NA, 4], [1, NA, 4]]
    assert [o["name"] for o in outs] == ["scores", "offsets", "anchors"]
    assert all(o["dtype"] == np.float32 for o in outs)
    ops = set(op_list(int8_path))
    assert ops <= TFLM_OPS and not ops & set(BATCH_OPS), ops


@pytest.mark.slow
def test_mcu_file_runs_in_tflm_and_equals_litert_reference_kernels_bit_for_bit(mcu, int8_path):
    from ssd_mnv1.runners import TFLiteRunner
    from ssd_mnv1.runners import TFLMRunner

    model, _, _ = mcu
    x = _noise(3, seed=1)
    tflm = TFLMRunner(int8_path)
    assert tflm.name == "tflm-int8" and tflm.input_size == SIZE
    ours, ref = tflm(x), TFLiteRunner(int8_path, reference=True)(x)
    for a, b in zip(ours, ref):
        assert a.shape[0] == 3 and a.dtype == np.float32 and np.array_equal(a, b)
    scores, _, anchors = ours
    assert np.allclose(scores.sum(-1), 1.0, atol=0.02)
    assert np.abs(anchors - model.anchors.numpy()).max() < 0.004  # int8-rounded anchors, one set per image


@pytest.mark.slow
def test_tflm_equals_litert_reference_kernels_on_real_images(int8_path, coco_person_val):
    from ssd_mnv1.runners import TFLiteRunner
    from ssd_mnv1.runners import TFLMRunner

    x = _real_images(coco_person_val, 4)
    for a, b in zip(TFLMRunner(int8_path)(x), TFLiteRunner(int8_path, reference=True)(x)):
        assert np.array_equal(a, b)


@pytest.mark.slow
def test_mcu_file_also_runs_in_litert_with_xnnpack(int8_path):
    """XNNPACK (LiteRT's default) cannot set up a DEQUANTIZE of a constant graph output; the static
    anchors go through a RESHAPE so that the --mcu file runs there too."""
    from ssd_mnv1.runners import TFLiteRunner
    from ssd_mnv1.runners import TFLMRunner

    x = _noise(2, seed=2)
    fast, tflm = TFLiteRunner(int8_path)(x), TFLMRunner(int8_path)(x)
    assert np.array_equal(fast[2], tflm[2])
    assert np.abs(fast[0] - tflm[0]).max() <= 0.05 and np.abs(fast[1] - tflm[1]).max() <= 0.1


@pytest.mark.slow
def test_float_mcu_file_runs_in_tflm_as_pytorch(mcu):
    from ssd_mnv1.runners import TFLMRunner

    model, result, _ = mcu
    x = _noise(1, seed=3)
    scores, offsets, anchors = TFLMRunner(result.files["tflite-fp32"])(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert np.abs(scores - ref[0].numpy()).max() <= 1e-4 and np.abs(offsets - ref[1].numpy()).max() <= 1e-4
    assert np.array_equal(anchors, ref[2].numpy())


@pytest.mark.slow
def test_arena_report_is_tflms_own_and_the_planner_mirror_gives_its_activation_bytes(int8_path):
    from ssd_mnv1.footprint_analysis import peak_activation_bytes, tflm_plan_bytes
    from ssd_mnv1.runners import TFLMRunner, TFLMUnsupportedModel

    report = TFLMRunner(int8_path).arena_report()
    assert "[RecordingMicroAllocator] Arena allocation total" in report.text
    assert report.arena_bytes == report.head_bytes + report.tail_bytes > 0
    assert report.sections["NodeAndRegistration struct"][2] > 40  # one per op
    assert tflm_plan_bytes(int8_path) == report.head_bytes
    assert peak_activation_bytes(int8_path) <= report.head_bytes  # the live-set peak is a lower bound
    x = _noise(1, seed=4)[0]
    TFLMRunner(int8_path, arena_size=report.arena_bytes).run_one(x)  # the reported size is enough...
    with pytest.raises(TFLMUnsupportedModel, match="cannot load this file") as err:  # ...and needed
        TFLMRunner(int8_path, arena_size=report.arena_bytes - 1024)
    assert err.value.missing_ops == ()


def _tile_file(path: Path) -> Path:
    """A small float .tflite with a TILE (as ST's anchors have)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def tiled(x):
        return tf.tile(x + 1.0, [3, 1])

    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([tiled.get_concrete_function()], tiled).convert())
    return path


@pytest.mark.slow
def test_a_file_with_tile_gives_one_error_naming_the_op(tmp_path):
    from ssd_mnv1.runners import TFLMRunner, TFLMUnsupportedModel

    path = _tile_file(tmp_path / "tile.tflite")
    with pytest.raises(TFLMUnsupportedModel, match="no kernel for op TILE") as err:
        TFLMRunner(path)
    assert err.value.missing_ops == ("TILE",) and "--mcu" in str(err.value)
    image = tmp_path / "img.png"
    Image.fromarray(_noise(1)[0]).save(image)
    res = subprocess.run([sys.executable, "-m", "ssd_mnv1.predict", str(path), str(image), "--out",
                          str(tmp_path / "out"), "--runtime", "tflm"], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no kernel for op TILE" in errors[0], res.stderr[-2000:]


@pytest.mark.reference
@pytest.mark.slow
def test_st_int8_file_is_refused_by_tflm_naming_tile_and_compat_knows_the_mcu_variant(reference_dir, int8_path):
    from ssd_mnv1.runners import TFLMRunner, TFLMUnsupportedModel

    st = st_files(reference_dir, SIZE).int8_tflite
    if not st.is_file():
        pytest.skip(f"{st} not present")
    with pytest.raises(TFLMUnsupportedModel, match="no kernel for op TILE"):
        TFLMRunner(st)
    res = subprocess.run([sys.executable, "-m", "ssd_mnv1.export.compat", str(int8_path), str(st)],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "DIFFERS" not in res.stdout, res.stdout + res.stderr[-2000:]
    assert "compatible except for the batch" in res.stdout and "note: batch: static 1" in res.stdout
    assert "on the reference, cannot load it: no kernel for TILE" in res.stdout


@pytest.mark.slow
def test_compat_of_the_mcu_file_with_itself_has_no_batch_note(int8_path):
    from ssd_mnv1.export.contract import compare, read_contract

    contract = read_contract(int8_path)
    diffs, notes = compare(contract, contract)
    assert contract.static_batch and diffs == [] and not [n for n in notes if n.startswith("batch:")]


@pytest.mark.slow
def test_evaluate_scores_a_tflm_runner_as_the_reference_kernels(int8_path, tmp_path):
    from ssd_mnv1.data import open_dataset
    from ssd_mnv1.evaluation import evaluate
    from ssd_mnv1.runners import TFLiteRunner
    from ssd_mnv1.runners import TFLMRunner
    from ssd_mnv1.training import render_scene

    (tmp_path / "images").mkdir()
    images, annotations = [], []
    for i in range(3):  # generated person scenes with their boxes (a COCO-layout set)
        pixels, boxes = render_scene(11, i, size=160)
        Image.fromarray(pixels).save(tmp_path / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 160, "height": 160})
        annotations += [{"id": 100 * i + j, "image_id": i, "category_id": 1, "iscrowd": 0,
                         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}
                        for j, (x1, y1, x2, y2) in enumerate(boxes * 160)]
    (tmp_path / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}))
    dataset = open_dataset(tmp_path)
    runs = [evaluate(r, dataset, ("st20", "st25"), workers=0, progress=False)
            for r in (TFLMRunner(int8_path), TFLiteRunner(int8_path, reference=True))]
    assert runs[0].images == 3 and runs[0].st_ap == runs[1].st_ap


@pytest.mark.slow
def test_predict_runs_the_mcu_file_in_tflm_and_refuses_other_files(mcu, int8_path, tmp_path):
    _, _, root = mcu
    image = tmp_path / "img.jpg"
    Image.fromarray(_noise(1, seed=5)[0]).save(image)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "ssd_mnv1.predict", str(int8_path), str(image), "--out", str(out),
                          "--runtime", "tflm", "--score", "0.0", "--max-det", "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((out / "detections.json").read_text())
    assert report["runner"] == "tflm-int8" and len(report["images"][0]["detections"]) == 2
    bad = subprocess.run([sys.executable, "-m", "ssd_mnv1.predict", str(root / "tiny.ckpt"), str(image), "--out",
                          str(out), "--runtime", "tflm"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--runtime tflm runs .tflite files only" in bad.stderr


@pytest.mark.slow
def test_footprint_reports_tflm_arena_next_to_st_and_the_estimates(int8_path, capsys):
    from ssd_mnv1.footprint import main as footprint_main
    from ssd_mnv1.runners import TFLMRunner

    assert footprint_main([str(int8_path), "--runs", "1"]) == 0
    out = capsys.readouterr().out
    report = TFLMRunner(int8_path).arena_report()
    assert "### TensorFlow Lite Micro" in out
    assert f"| {report.head_bytes:,} B" in out and f"| {report.arena_bytes:,} B" in out
    assert "266.3 KiB (activation RAM)" in out and "483.16 KiB (weights flash)" in out
    assert "equal to TFLM's head" in out and "How the runtimes differ" in out


@pytest.mark.slow
def test_missing_tflite_micro_names_the_mcu_extra(int8_path, monkeypatch):
    from ssd_mnv1.runners import tflm

    for name in ("tflite_micro", "tflite_micro.python", "tflite_micro.python.tflite_micro",
                 "tflite_micro.python.tflite_micro.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ValueError, match=r"pip install -e '\.\[mcu\]'"):
        tflm.TFLMRunner(int8_path)


def test_reference_kernels_refuse_st_int8_file_naming_the_fix(reference_dir):
    """TFLite's reference resolver lacks int8 TILE (version 3), which ST's files use for the anchors."""
    from ssd_mnv1.runners import open_runner

    st = st_files(reference_dir, SIZE).int8_tflite
    with pytest.raises(ValueError, match="--tflite-kernels builtin, or an --mcu export"):
        open_runner(st, tflite_kernels="reference")
    assert open_runner(st, tflite_kernels="builtin").input_size == SIZE
