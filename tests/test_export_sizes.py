"""The real export chain (onnx2tf, TFLite converter, LiteRT interpreter) at input sizes and class
counts ST ships no file for: a three-class detector at 160 (the ``--mcu`` variant, with the QDQ
ONNX) and at 320 (ST's dynamic batch). Three classes is the case where the score output is 4 wide
(background + 3) like the two box outputs, so nothing may tell them apart by width.

Two onnx2tf runs in all (module fixtures, ~40 s each). Needs the ``export`` extra.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # onnx2tf runs (module fixtures)

CLASSES = ("a", "b", "c")
#: Anchors of the derived graphs: 160 -> levels (24, 12, 6, 3, 1), 320 -> (48, 24, 12, 6, 3, 1).
NUM_ANCHORS = {160: 3830, 320: 15350}


@pytest.fixture(scope="module")
def export_160(tiny_export):
    """160, three classes, ``--mcu`` (static batch 1), int8 TFLite and QDQ ONNX from one calibration."""
    return tiny_export("export_160_3cls", input_size=160, class_names=CLASSES, to=("tflite-int8", "onnx-qdq"),
                       mcu=True)


@pytest.fixture(scope="module")
def export_320(tiny_export):
    """320, three classes, ST's dynamic batch, int8 TFLite from three calibration images."""
    return tiny_export("export_320_3cls", input_size=320, class_names=CLASSES, calib_count=3)


@pytest.fixture(params=[160, 320])
def sized(request):
    return request.param, request.getfixturevalue(f"export_{request.param}")


def test_int8_file_has_st_contract_with_this_size_anchors_and_one_score_column_per_class(sized):
    from ssd_mnv1.export.contract import output_quantization
    from ssd_mnv1.export.tflite_edit import op_list
    from ssd_mnv1.runners import make_interpreter

    size, (model, result, _) = sized
    na = NUM_ANCHORS[size]
    assert model.spec.num_anchors == na
    path = result.files["tflite-int8"]
    it = make_interpreter(path)
    (inp,) = it.get_input_details()
    batch = 1 if result.mcu else -1
    assert inp["dtype"] == np.uint8 and list(inp["shape"]) == [1, size, size, 3]
    assert list(inp["shape_signature"]) == [batch, size, size, 3]
    assert np.isclose(inp["quantization"][0], 1 / 127.5) and inp["quantization"][1] == 127
    outs = it.get_output_details()
    assert [tuple(o["shape"]) for o in outs] == [(1, na, 1 + len(CLASSES)), (1, na, 4), (1, na, 4)]
    assert [int(o["shape_signature"][0]) for o in outs] == [batch] * 3
    assert all(o["dtype"] == np.float32 for o in outs)
    scores_q, offsets_q, anchors_q = output_quantization(path)
    assert scores_q == (pytest.approx(1 / 256), -128)
    assert offsets_q is not None and anchors_q is not None
    assert not [op for op in op_list(path) if op.startswith("CUSTOM")]


def test_tflite_outputs_in_st_order_agree_with_the_pytorch_model(sized):
    """The exporter's own check, outputs taken by position: the float file equals PyTorch float, the
    int8 file tracks the fake-quant model it was converted from."""
    from ssd_mnv1.preprocess import normalize
    from ssd_mnv1.runners import make_interpreter

    size, (model, result, _) = sized
    fp32, int8 = result.tflite_parity["tflite-fp32"], result.tflite_parity["tflite-int8"]
    assert fp32["scores"] <= 1e-4 and fp32["offsets"] <= 1e-4 and fp32["anchors"] == 0.0
    assert int8["scores"] < 0.05 and int8["offsets"] < 0.1 and int8["anchors"] < 0.004
    # the scores output (position 0) is the softmax, also where offsets are as wide
    it = make_interpreter(result.files["tflite-int8"])
    it.allocate_tensors()
    x = np.random.default_rng(5).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    scores, offsets, anchors = (it.get_tensor(o["index"]) for o in it.get_output_details())
    assert np.allclose(scores.sum(-1), 1.0, atol=0.02) and not np.allclose(offsets.sum(-1), 1.0, atol=0.02)
    with torch.no_grad():
        ref = model(torch.from_numpy(normalize(x)).permute(0, 3, 1, 2))
    assert np.abs(anchors[0] - ref[2][0].numpy()).max() < 0.004
    assert np.abs(scores - ref[0].numpy()).max() < 0.1


def _compat(argv, capsys) -> tuple[int, str]:
    from ssd_mnv1.export.compat import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().out


def test_compat_expect_passes_against_the_checkpoint_contract(sized, capsys):
    size, (_, result, root) = sized
    rc, out = _compat([result.files["tflite-int8"], "--expect", root / "tiny.ckpt"], capsys)
    assert rc == 0, out
    assert f"compatible: {result.files['tflite-int8']} has ST's int8 I/O contract for {size}x{size} input, " \
           f"{NUM_ANCHORS[size]} anchors, 3 classes" in out
    assert "DIFFERS" not in out and f"note: anchors: equal generate_anchors({size})" in out
    assert ("note: batch: static 1" in out) == result.mcu
    rc, out = _compat([result.files["tflite-int8"], "--size", size, "--classes", "a,b,c"], capsys)
    assert rc == 0, out


def test_compat_expect_names_wrong_classes_and_wrong_size(export_160, trained_like_model, tmp_path, capsys):
    """A 1-class checkpoint at the same size: the score width differs; a 3-class one at 192, whose
    normalized anchors are 160's (same levels, same sizes): only the input differs; at 320 the
    anchor count differs too."""
    from ssd_mnv1.checkpoint import save_checkpoint

    _, result, _ = export_160
    path = result.files["tflite-int8"]
    one_class = save_checkpoint(trained_like_model(160, ["person"]), tmp_path / "person.ckpt")
    rc, out = _compat([path, "--expect", one_class], capsys)
    assert rc == 1
    assert "DIFFERS: output 0 ('scores', expected scores): shape [1, 3830, 4] vs expected [1, 3830, 2]" in out
    assert "1 + 1 score columns" in out and out.count("DIFFERS:") == 1, out
    other_size = save_checkpoint(trained_like_model(192, CLASSES), tmp_path / "s192.ckpt")
    rc, out = _compat([path, "--expect", other_size], capsys)
    assert rc == 1
    assert "DIFFERS: input 0 ('serving_default_input:0'): shape [1, 160, 160, 3] vs expected [1, 192, 192, 3]" in out
    assert out.count("DIFFERS:") == 1 and "note: anchors: equal generate_anchors(192)" in out, out
    rc, out = _compat([path, "--size", 320, "--classes", 3], capsys)
    assert rc == 1 and "DIFFERS: anchors: the file outputs 3830 anchors, expected 15350" in out
    with pytest.raises(SystemExit):  # one mode at a time
        _compat([path, path, "--expect", one_class], capsys)
    with pytest.raises(SystemExit):
        _compat([path, "--classes", 3], capsys)


def test_compat_expect_refuses_the_float_file(export_320, capsys):
    _, result, root = export_320
    rc, out = _compat([result.files["tflite-fp32"], "--expect", root / "tiny.ckpt"], capsys)
    assert rc == 1 and "dtype float32 vs expected uint8" in out
    assert "('scores', expected scores): not the DEQUANTIZE of an int8 tensor" in out


def test_footprint_reads_size_and_classes_from_the_file(sized):
    from ssd_mnv1.footprint_analysis import tflite_architecture

    size, (_, result, _) = sized
    assert tflite_architecture(result.files["tflite-int8"]) == {"alpha": 0.25, "input_size": size, "num_classes": 3}


def test_mcu_file_at_160_loads_in_tflm_and_qdq_carries_its_scales(export_160):
    from ssd_mnv1.export.qdq_audit import compare_scales, format_scale_report
    from ssd_mnv1.runners import tflm_available

    _, result, _ = export_160
    assert result.files["tflite-int8"].name == "tiny_int8_mcu.tflite"
    assert (result.tflm_arena_bytes is not None) == tflm_available()
    report = compare_scales(result.files["onnx-qdq"], result.files["tflite-int8"])
    print(format_scale_report(report))
    assert report["matched"] == report["qdq_convs"] == report["tflite_convs"]
    # logits and offsets are both 4 wide here: the concatenations are told apart by role
    assert set(report["concat_outputs"]) == {"logits", "offsets"}
    for v in report["concat_outputs"].values():
        assert v["scale_rel"] < 1e-3 and abs(v["zp_diff"]) <= 1, v
    assert report["softmax_output"]["qdq"] == report["softmax_output"]["tflite"] == (1 / 256, -128)


def _three_class_coco(folder, n: int = 6, size: int = 160):
    """A tiny COCO folder: filled rectangles of categories a/b/c (and d, which the model has not),
    drawn on noise; ``c`` only in the last image."""
    from PIL import Image, ImageDraw

    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(7)
    colors = {1: (230, 40, 40), 2: (40, 230, 40), 3: (40, 40, 230), 7: (230, 230, 40)}
    images, annotations = [], []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 60, (size, size, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        cats = [1, 2, 7] + ([3] if i == n - 1 else [])
        for j, cat in enumerate(cats):
            x, y = int(rng.integers(0, size // 2)), int(rng.integers(0, size // 2))
            w, h = int(rng.integers(20, size // 2)), int(rng.integers(20, size // 2))
            draw.rectangle([x, y, x + w, y + h], fill=colors[cat])
            annotations.append({"id": 100 * i + j, "image_id": i, "category_id": cat, "iscrowd": 0,
                                "area": float(w * h), "bbox": [float(x), float(y), float(w), float(h)]})
        img.save(folder / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": size, "height": size})
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}, {"id": 7, "name": "d"}]
    (folder / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return folder


def test_ledger_reports_st_ap_per_class_for_every_stage(export_160, tmp_path):
    from ssd_mnv1.export.ledger import build_ledger, ledger_markdown, write_ledger

    _, result, root = export_160
    data = _three_class_coco(tmp_path / "data")
    ledger = build_ledger(root / "tiny.ckpt", result, data)
    assert ledger["class_names"] == list(CLASSES)
    stages = [r["stage"] for r in ledger["stages"]]
    assert stages == ["pytorch-float", "onnx", "tflite-fp32", "pytorch-fake-quant", "tflite-int8", "onnx-qdq"]
    for row in ledger["stages"]:
        per_class = row["st_ap_20_per_class"]
        assert list(per_class) == list(CLASSES)  # the model's classes only, not the dataset's d
        assert all(v is not None and 0.0 <= v <= 100.0 for v in per_class.values()), row
        assert row["st_ap_20"] == pytest.approx(np.mean(list(per_class.values())), abs=1e-3)
    text = ledger_markdown(ledger)
    assert "ST-AP per class" in text and "| stage | `a` | `b` | `c` |" in text
    assert "| tflite-int8 | " in text.split("ST-AP per class")[1]
    json_path, md_path = write_ledger(ledger, tmp_path / "out")
    assert json.loads(json_path.read_text())["stages"][0]["st_ap_20_per_class"].keys() == set(CLASSES)
    # without the last image, c has no ground truth: null, left out of the mean, "–" in the table
    with pytest.warns(UserWarning, match="no ground truth"):
        partial = build_ledger(root / "tiny.ckpt", result, data, limit=5)
    for row in partial["stages"]:
        per_class = row["st_ap_20_per_class"]
        assert per_class["c"] is None and None not in (per_class["a"], per_class["b"])
        assert row["st_ap_20"] == pytest.approx((per_class["a"] + per_class["b"]) / 2, abs=1e-3)
    assert "| pytorch-float | " in ledger_markdown(partial).split("ST-AP per class")[1]
    assert " | – |" in ledger_markdown(partial).split("ST-AP per class")[1]
