"""The real export chain (onnx2tf, TFLite converter, LiteRT interpreter) on a small random model,
and on ST's own 192 .h5 against ST's int8 file when ../shared/reference is present.

Needs the ``export`` extra, which CI installs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssd_mnv1.checkpoint import save_checkpoint
from ssd_mnv1.zoo import st_files

pytestmark = pytest.mark.slow  # every test runs onnx2tf (module fixtures) or an export CLI

SIZE = 192


@pytest.fixture(scope="module")
def exported(tiny_int8_export):
    return tiny_int8_export


def _run_tflite(path, x_uint8):
    from ssd_mnv1.runners import TFLiteRunner

    return TFLiteRunner(path)(x_uint8)


def test_onnx_stage_matches_pytorch(exported):
    _, result, _ = exported
    assert max(result.onnx_parity.values()) < 1e-4


def test_tflite_fp32_matches_pytorch(exported):
    model, result, _ = exported
    x = np.random.default_rng(1).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    scores, offsets, anchors = _run_tflite(result.files["tflite-fp32"], x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert np.abs(scores - ref[0].numpy()).max() <= 1e-4
    assert np.abs(offsets - ref[1].numpy()).max() <= 1e-4
    assert np.array_equal(anchors, ref[2].numpy())


def test_int8_file_has_st_io_contract(exported):
    from ssd_mnv1.runners import make_interpreter
    from ssd_mnv1.export.tflite_edit import op_list

    _, result, _ = exported
    path = result.files["tflite-int8"]
    it = make_interpreter(path)
    (inp,) = it.get_input_details()
    assert inp["dtype"] == np.uint8 and list(inp["shape"]) == [1, SIZE, SIZE, 3]
    assert np.isclose(inp["quantization"][0], 1 / 127.5) and inp["quantization"][1] == 127
    outs = it.get_output_details()
    assert [tuple(o["shape"]) for o in outs] == [(1, 3830, 2), (1, 3830, 4), (1, 3830, 4)]
    assert all(o["dtype"] == np.float32 for o in outs)
    ops = op_list(path)
    assert not [op for op in ops if op.startswith("CUSTOM")]
    assert ops[0] == "QUANTIZE" and "CONV_2D" in ops and "DEPTHWISE_CONV_2D" in ops


def test_int8_outputs_track_float_and_anchors_are_int8_rounded(exported):
    model, result, _ = exported
    x = np.random.default_rng(2).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    scores, _, anchors = _run_tflite(result.files["tflite-int8"], x)
    assert np.abs(anchors[0] - model.anchors.numpy()).max() < 0.004
    assert np.allclose(scores.sum(-1), 1.0, atol=0.02)


def test_compat_check_passes_on_itself_and_names_differences(exported):
    from ssd_mnv1.export.contract import compare, read_contract

    _, result, _ = exported
    int8, fp32 = read_contract(result.files["tflite-int8"]), read_contract(result.files["tflite-fp32"])
    assert compare(int8, int8)[0] == []
    diffs, _ = compare(fp32, int8)
    assert any("dtype float32 vs reference uint8" in d for d in diffs)


def _run_batch(path, x):
    from ssd_mnv1.runners import make_interpreter

    it = make_interpreter(path, builtin=True)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return [it.get_tensor(o["index"]) for o in it.get_output_details()]


@pytest.mark.parametrize("target", ["tflite-fp32", "tflite-int8"])
def test_exported_tflite_has_a_dynamic_batch_and_one_anchor_set_per_image(exported, target):
    """ST's files have batch -1 and ST's host evaluation resizes the input to 64 images."""
    from ssd_mnv1.runners import make_interpreter

    _, result, _ = exported
    path = result.files[target]
    it = make_interpreter(path)
    assert [int(d["shape_signature"][0]) for d in it.get_input_details() + it.get_output_details()] == [-1] * 4
    x = np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    if target == "tflite-fp32":
        x = x.astype(np.float32) / np.float32(127.5) - np.float32(1)
    together = _run_batch(path, x)
    for i in range(3):
        alone = _run_batch(path, x[i:i + 1])
        for a, b in zip(together, alone):
            assert a.shape[0] == 3 and np.abs(a[i:i + 1] - b).max() <= 1e-5


def test_per_channel_export_has_per_channel_weights_and_per_tensor_option_has_none(exported, tmp_path):
    from ssd_mnv1.export import tf_stage, tflite_edit
    from ssd_mnv1.export.contract import weight_quantization
    from ssd_mnv1.quantization.calibration import calibration_images

    model, result, root = exported
    assert weight_quantization(result.files["tflite-int8"])["per-tensor"] == 0
    data = tf_stage.to_tflite_int8(result.files["saved_model"], calibration_images(root / "calib", SIZE, 6),
                                   per_tensor=True)
    path = tmp_path / "per_tensor.tflite"
    path.write_bytes(tflite_edit.finalize_outputs(data, model.anchors.numpy(), quantized=True))
    counts = weight_quantization(path)
    assert counts["per-tensor"] > 0 and counts["per-channel"] == 0 and counts["float"] == 0


def test_compat_check_names_outputs_swapped_in_the_same_shape(exported, tmp_path):
    """Offsets and anchors are both (1,NA,4): only their content tells a wrong order apart."""
    from ssd_mnv1.export.contract import compare, read_contract
    from ssd_mnv1.tflite_file import read, to_bytes

    _, result, _ = exported
    model = read(result.files["tflite-int8"]).flatbuffer
    sg = model.subgraphs[0]
    sg.outputs = np.asarray([sg.outputs[0], sg.outputs[2], sg.outputs[1]], dtype=np.int32)
    model.signatureDefs = []
    swapped = tmp_path / "swapped.tflite"
    swapped.write_bytes(to_bytes(model))
    diffs, _ = compare(read_contract(swapped), read_contract(result.files["tflite-int8"]))
    assert diffs == ["output order by content: ['scores', 'anchors', 'offsets'] vs reference "
                     "['scores', 'offsets', 'anchors']"]


# ------------------------------------------------------------- ST's own .h5 vs ST's own int8 file

@pytest.fixture(scope="module")
def st_192_export(tmp_path_factory, reference_dir):
    """ST's 192 .h5 through our importer and the whole chain; calibrated on the test-vector photo
    only (the I/O contract and float parity do not depend on calibration quality)."""
    st = st_files(reference_dir, 192)
    photo = reference_dir / "test_vectors" / "people_826x547.jpg"
    if not all(f.is_file() for f in (st.h5, st.int8_tflite, photo)):
        pytest.skip(f"ST reference files not present at {st.folder}")
    from ssd_mnv1 import load_model
    from ssd_mnv1.export.pipeline import export

    root = tmp_path_factory.mktemp("st192")
    (root / "calib").mkdir()
    (root / "calib" / "people.jpg").write_bytes(photo.read_bytes())
    result = export(st.h5, root / "out", "tflite-int8", calib=root / "calib", calib_count=1, log=lambda *_: None)
    return load_model(st.h5).eval(), result


def test_st_192_h5_exports_to_float_tflite_equal_to_pytorch(st_192_export, reference_dir):
    model, result = st_192_export
    photo = np.load(reference_dir / "test_vectors" / "ref_outputs_192.npz")["input_uint8_hwc"][None]
    noise = np.random.default_rng(4).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    x = np.concatenate([photo, noise]).astype(np.float32) / np.float32(127.5) - np.float32(1)
    scores, offsets, anchors = _run_batch(result.files["tflite-fp32"], x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert np.abs(scores - ref[0].numpy()).max() <= 1e-4
    assert np.abs(offsets - ref[1].numpy()).max() <= 1e-4
    assert np.array_equal(anchors, ref[2].numpy())


def test_st_192_h5_int8_export_has_exactly_the_io_contract_of_st_int8_file(st_192_export, reference_dir):
    from ssd_mnv1.export.contract import output_quantization

    _, result = st_192_export
    ours, ref = result.files["tflite-int8"], st_files(reference_dir, 192).int8_tflite
    res = subprocess.run([sys.executable, "-m", "ssd_mnv1.export.compat", str(ours), str(ref)],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "DIFFERS" not in res.stdout, res.stdout + res.stderr[-2000:]
    assert "compatible" in res.stdout
    # the anchors constant is quantized with the same min/max rule as ST's converter
    assert output_quantization(ours)[2] == pytest.approx(output_quantization(ref)[2], rel=1e-6)


def test_interrupted_export_leaves_no_file_under_the_final_name(exported, monkeypatch, tmp_path):
    """A crash while the int8 file is being written leaves neither a truncated file nor a temp file."""
    from ssd_mnv1.export import pipeline

    _, _, root = exported
    real_write = Path.write_bytes

    def crash_half_way(self, data):
        real_write(self, data[: len(data) // 2])
        raise KeyboardInterrupt("simulated kill")

    original = pipeline._write

    def write(path, data):
        if path.name.endswith("_int8.tflite"):
            monkeypatch.setattr(Path, "write_bytes", crash_half_way)
        return original(path, data)

    monkeypatch.setattr(pipeline, "_write", write)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        pipeline.export(root / "tiny.ckpt", out, "tflite-int8", calib=root / "calib", calib_count=2, log=lambda *_: None)
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if "int8" in n or n.endswith(".tmp")], names
    assert "tiny_float32.tflite" in names  # earlier stages were completed and are whole


def test_export_cli_requires_calibration_images_for_int8(exported, tmp_path):
    _, _, root = exported
    res = subprocess.run([sys.executable, "-m", "ssd_mnv1.export", str(root / "tiny.ckpt"), "--to", "tflite-int8",
                          "--out", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "--calib" in res.stderr and "Traceback" not in res.stderr


def _tiny_coco(folder: Path, n: int = 4) -> Path:
    """A COCO-layout set of generated person images (the ledger needs ground truth)."""
    import json

    from ssd_mnv1.training import render_scene

    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        pixels, boxes = render_scene(11, i, size=160)
        Image.fromarray(pixels).save(folder / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 160, "height": 160})
        for j, (x1, y1, x2, y2) in enumerate(boxes * 160):
            annotations.append({"id": 100 * i + j, "image_id": i, "category_id": 1, "iscrowd": 0,
                                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    (folder / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}))
    return folder


def test_ledger_evaluates_every_stage_and_writes_json_markdown_and_the_layer_chart(exported, tmp_path):
    from ssd_mnv1.export.layer_ledger import build_layer_ledger
    from ssd_mnv1.export.ledger import build_ledger, write_ledger

    _, result, root = exported
    data = _tiny_coco(tmp_path / "data")
    ledger = build_ledger(root / "tiny.ckpt", result, data)
    stages = [r["stage"] for r in ledger["stages"]]
    assert stages == ["pytorch-float", "onnx", "tflite-fp32", "pytorch-fake-quant", "tflite-int8"]
    rows = {r["stage"]: r for r in ledger["stages"]}
    assert rows["tflite-fp32"]["max_diff_vs_float_scores"] < 1e-4
    assert rows["tflite-fp32"]["det_agreement_prev"] == 1.0
    int8 = rows["tflite-int8"]
    assert 0.0 <= int8["det_agreement_prev"] <= 1.0 and 0.0 <= int8["kernel_floor_det_agreement"] <= 1.0
    assert "st_ap_20_reference_kernels" in int8 and "CONV_2D" in int8["ops"]
    assert int8["confident_agreement_vs"] == "pytorch-fake-quant" and 0.0 <= int8["confident_det_agreement"] <= 1.0
    assert ledger["equalization"] is None and ledger["weights"] == "per-channel"
    ledger["layers"] = build_layer_ledger(result.models["pytorch-fake-quant"], result.files["tflite-int8"],
                                          result.files["tflite-fp32"], data, limit=2, progress=False)
    json_path, md_path, png_path = write_ledger(ledger, tmp_path / "out")
    text = md_path.read_text()
    assert "| tflite-int8 |" in text and "noise floor" in text and json_path.is_file()
    assert "## Per-layer" in text and "`backbone.conv1`" in text
    assert png_path.name == "ledger_layers.png" and png_path.stat().st_size > 10_000


def test_per_tensor_export_equalizes_exactly_and_writes_the_qdq_file_without_tensorflow(exported, tmp_path):
    """Per-tensor int8 from a float model equalizes first (the float function is kept); --no-equalize
    and a per-channel export do not."""
    from ssd_mnv1.export.pipeline import export

    _, _, root = exported
    result = export(root / "tiny.ckpt", tmp_path / "pt", "onnx-qdq", calib=root / "calib", calib_count=4,
                    per_tensor=True, log=lambda *_: None)
    assert set(result.files) == {"onnx", "onnx-qdq"} and result.files["onnx-qdq"].name == "tiny_qdq_per_tensor.onnx"
    assert result.equalization["pairs"] > 0 and result.equalization["bias_correction_images"] == 4
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        for a, b in zip(result.models["pytorch-float"](x), result.models["pytorch-equalized"](x)):
            assert float((a - b).abs().max()) < 1e-4
    assert result.onnx_parity["scores"] < 1e-4  # the float ONNX is the equalized model
    plain = export(root / "tiny.ckpt", tmp_path / "plain", "onnx-qdq", calib=root / "calib", calib_count=4,
                   per_tensor=True, equalize=False, log=lambda *_: None)
    assert plain.equalization is None and "pytorch-equalized" not in plain.models


def test_a_qat_checkpoint_exports_with_the_weight_granularity_it_was_trained_with(exported, tmp_path):
    from ssd_mnv1.export.pipeline import export
    from ssd_mnv1.quantization import calibrate, prepare_qat

    model, _, root = exported
    qat = calibrate(prepare_qat(model, per_tensor=True), [torch.rand(2, 3, SIZE, SIZE) * 2 - 1])
    ckpt = save_checkpoint(qat, tmp_path / "qat_pt.ckpt")
    with pytest.raises(ValueError, match="per-tensor QAT checkpoint; export it with --per-tensor"):
        export(ckpt, tmp_path / "out", "onnx-qdq", calib=root / "calib", log=lambda *_: None)
    result = export(ckpt, tmp_path / "out", ("onnx", "onnx-qdq"), calib=root / "calib", per_tensor=True,
                    log=lambda *_: None)
    assert result.equalization is None and result.models["pytorch-fake-quant"] is not None


def test_export_cli_takes_several_targets_and_names_a_wrong_one(exported, tmp_path):
    _, _, root = exported
    ok = subprocess.run([sys.executable, "-m", "ssd_mnv1.export", str(root / "tiny.ckpt"), "--to", "onnx", "onnx-qdq",
                         "--calib", str(root / "calib"), "--calib-count", "2", "--out", str(tmp_path)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "tiny.onnx").is_file() and (tmp_path / "tiny_qdq.onnx").is_file()
    bad = subprocess.run([sys.executable, "-m", "ssd_mnv1.export", str(root / "tiny.ckpt"), "--to", "onnx", "qdq",
                          "--out", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "qdq" in bad.stderr and "Traceback" not in bad.stderr
