"""The per-layer quantization ledger (export/layer_ledger.py) on a small seeded 192 model exported
through the real chain (onnx2tf, TFLite converter) per-channel and per-tensor, with a tiny
synthetic dataset, so that nothing here needs ../shared.

Needs the ``export`` extra, which CI installs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx2tf")
pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.slow  # conftest's tiny_int8_export runs onnx2tf

from ssd_mnv1.layers import ConvBN  # noqa: E402

SIZE = 192
IMAGES = 4
#: Row kinds of a conv block: weights and output, or weights only (a head conv, whose int8 output
#: is at its concatenation's scale).
CONV_KINDS = ("weights+output", "weights")


def _synthetic_coco(root, n: int = IMAGES):
    """``root/annotations.json`` + ``root/images/*.jpg``: random pictures, one person box each."""
    rng = np.random.default_rng(3)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 160, "height": 120})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [20, 10, 60, 80]})
    (root / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}))
    return root


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory, tiny_int8_export):
    """(model, per-channel ledger, per-tensor ledger (with leave-one-out), files, data, calib)."""
    from ssd_mnv1.export import tf_stage, tflite_edit
    from ssd_mnv1.export.layer_ledger import build_layer_ledger
    from ssd_mnv1.anchors import generate_anchors
    from ssd_mnv1.quantization.calibration import calibration_images

    model, result, export_root = tiny_int8_export
    root = tmp_path_factory.mktemp("layer_ledger")
    calib, ckpt = export_root / "calib", export_root / "tiny.ckpt"
    data = _synthetic_coco(root / "data")
    # The per-tensor file from the same SavedModel, as export(per_tensor=True) makes it (saves a
    # second onnx2tf run).
    cal = calibration_images(calib, SIZE, 6)
    int8_pt = tflite_edit.finalize_outputs(
        tf_stage.to_tflite_int8(result.files["saved_model"], cal, per_tensor=True),
        generate_anchors(SIZE).numpy(), quantized=True)
    per_tensor_file = root / "tiny_int8_per_tensor.tflite"
    per_tensor_file.write_bytes(int8_pt)
    files = {"fp32": result.files["tflite-fp32"], "pc": result.files["tflite-int8"], "pt": per_tensor_file}
    pc = build_layer_ledger(model, files["pc"], files["fp32"], data, calib_images=calib, calib_count=6,
                            limit=IMAGES, progress=False)
    pt = build_layer_ledger(ckpt, files["pt"], files["fp32"], data, calib_images=cal, limit=IMAGES,
                            leave_one_out=True, progress=False)
    return model, pc, pt, files, data, calib


def _conv_count(path) -> int:
    from ssd_mnv1.export.tflite_edit import op_list

    return sum(op in ("CONV_2D", "DEPTHWISE_CONV_2D") for op in op_list(path))


def test_every_conv_and_quantizer_gets_a_named_row(ledgers):
    from ssd_mnv1.quantization import prepare_qat
    from ssd_mnv1.quantization.qat import ActivationQuantizer, InputQuantizer

    model, pc, pt, files, _, _ = ledgers
    qat = prepare_qat(model)
    convs = {p for p, m in model.named_modules() if isinstance(m, ConvBN)}
    acts = {p for p, m in qat.named_modules() if isinstance(m, (ActivationQuantizer, InputQuantizer))
            and not p.endswith(".output_quant")}
    assert {"neck.gap_quant", "neck.add_quant.0", "head.cls_quant", "head.box_quant"} <= acts
    weights_only = {p for p, m in qat.named_modules() if isinstance(m, ConvBN)
                    and not isinstance(m.output_quant, ActivationQuantizer)}
    for ledger, key in ((pc, "pc"), (pt, "pt")):
        rows = ledger["layers"]
        conv_rows = [r for r in rows if r["kind"] in CONV_KINDS]
        assert len(conv_rows) == _conv_count(files[key]) == len(convs)
        assert {r["module"] for r in conv_rows} == convs
        assert {r["module"] for r in rows if r["kind"] == "activation"} == acts
        assert {r["module"] for r in rows if r["kind"] == "weights"} == weights_only
        for r in rows:
            assert r["tensor"] and r["tensor_index"] is not None, r
            assert r["sqnr_db"] is not None and r["local_sqnr_db"] is not None
        assert all(r["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D") and r["weight_sqnr_db"] is not None
                   for r in conv_rows)
    by = {r["module"]: r for r in pc["layers"]}
    assert by["neck.gap_quant"]["op"] == "MEAN" and by["neck.add_quant.0"]["op"] == "ADD"
    assert by["head.cls_quant"]["op"] == by["head.box_quant"]["op"] == "CONCATENATION"
    assert by["scores_quant"]["op"] == "SOFTMAX" and by["input_quant"]["op"] == "QUANTIZE"
    assert by["backbone.blocks.3.dw"]["op"] == "DEPTHWISE_CONV_2D"
    assert by["backbone.blocks.3.pw"]["op"] == "CONV_2D"
    assert pc["other_tensors"] and all(o["follows"] for o in pc["other_tensors"] if o["op"] != "QUANTIZE")


def test_matched_tensors_are_the_modules_outputs(ledgers):
    """The float file's tensor of each row is that module's output in PyTorch, and the int8 one
    tracks it closely per-channel (the pairing is no accident of names)."""
    from ssd_mnv1.export.layer_ledger import _Graph, match_tensors
    from ssd_mnv1.preprocess import normalize

    model, pc, _, files, _, _ = ledgers
    q, f = _Graph(files["pc"]), _Graph(files["fp32"])
    matches = {m.module: m for m in match_tensors(model, q, f) if m.module}
    image = np.random.default_rng(5).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    outs = {}
    modules = dict(model.named_modules())
    # Every row's module exists in the float model (its quantization slots are identities there).
    assert set(matches) <= set(modules)
    hooks = [modules[p].register_forward_hook(lambda mod, i, o, p=p: outs.__setitem__(p, o.detach()))
             for p in matches]
    with torch.no_grad():
        model(torch.from_numpy(normalize(image[None])).permute(0, 3, 1, 2))
    for h in hooks:
        h.remove()
    f.feed(image)
    assert {"input_quant", "scores_quant", "neck.gap_quant", "head.cls_quant"} <= set(outs)
    for path, m in matches.items():
        ref = outs[path]
        ref = ref[0].permute(1, 2, 0).numpy() if ref.dim() == 4 else ref[0].numpy()
        got = f.value(m.fp32_index)[0]
        assert got.shape == ref.shape, path
        assert np.abs(got - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max()), path
    conv_sqnr = [r["sqnr_db"] for r in pc["layers"] if r["kind"] in CONV_KINDS]
    assert min(conv_sqnr) > 20.0, sorted(conv_sqnr)[:5]
    weight_sqnr = [r["weight_sqnr_db"] for r in pc["layers"] if r["kind"] in CONV_KINDS]
    assert min(weight_sqnr) > 35.0


def test_per_tensor_weights_lose_more_than_per_channel(ledgers):
    _, pc, pt, _, _, _ = ledgers
    assert pc["weight_granularity"] == "per-channel" and pt["weight_granularity"] == "per-tensor"
    a = {r["module"]: r for r in pc["layers"] if r["kind"] in CONV_KINDS}
    b = {r["module"]: r for r in pt["layers"] if r["kind"] in CONV_KINDS}
    assert all(r["weight_granularity"] == "per-channel" for r in a.values())
    assert all(r["weight_granularity"] == "per-tensor" for r in b.values())
    depthwise = [p for p in a if p.endswith(".dw")]
    # A depthwise kernel's channels differ most in scale: one shared scale always costs SQNR there.
    assert all(b[p]["weight_sqnr_db"] < a[p]["weight_sqnr_db"] for p in depthwise)
    assert np.mean([b[p]["weight_sqnr_db"] for p in a]) < np.mean([a[p]["weight_sqnr_db"] for p in a]) - 3
    assert all(b[p]["weight_sqnr_db"] <= a[p]["weight_sqnr_db"] + 0.5 for p in a)
    assert np.mean([b[p]["sqnr_db"] for p in a]) < np.mean([a[p]["sqnr_db"] for p in a])


def test_rows_sorted_worst_first_with_costs_and_header(ledgers):
    _, pc, pt, _, _, _ = ledgers
    for ledger in (pc, pt):
        rows = ledger["layers"]
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        keys = [(-r["st_ap_cost"], r["sqnr_db"]) for r in rows]
        assert keys == sorted(keys)
        ap = ledger["st_ap"]
        assert set(ap) == {"pytorch_float", "pytorch_fake_quant_all", "tflite_fp32", "tflite_int8"}
        assert all(0.0 <= v <= 100.0 for v in ap.values())
        for r in rows:
            assert r["st_ap_cost"] == pytest.approx(ap["pytorch_float"] - r["st_ap_alone"], abs=1e-3)
        assert ledger["images"] == IMAGES and ledger["input_size"] == SIZE
    assert all(r["st_ap_recovery"] == pytest.approx(r["st_ap_without"] - pt["st_ap"]["pytorch_fake_quant_all"],
                                                    abs=1e-3) for r in pt["layers"])
    assert "st_ap_recovery" not in pc["layers"][0]


def test_local_sqnr_names_the_per_tensor_layers(ledgers):
    """A layer's own noise does not depend on the layers before it: an activation quantizer's is the
    same per-tensor and per-channel, a depthwise conv's is lower per-tensor."""
    _, pc, pt, _, _, _ = ledgers
    a = {r["module"]: r["local_sqnr_db"] for r in pc["layers"]}
    b = {r["module"]: r["local_sqnr_db"] for r in pt["layers"]}
    assert b["neck.gap_quant"] == pytest.approx(a["neck.gap_quant"], abs=1e-6)
    assert b["input_quant"] == pytest.approx(a["input_quant"], abs=1e-6)
    assert np.mean([b[p] for p in a if p.endswith(".dw")]) < np.mean([a[p] for p in a if p.endswith(".dw")])


def test_written_files(ledgers, tmp_path):
    from ssd_mnv1.export.layer_ledger_report import write_layer_ledger

    _, _, pt, _, _, _ = ledgers
    js, md, png = write_layer_ledger(pt, tmp_path)
    loaded = json.loads(js.read_text())
    assert loaded["layers"] == pt["layers"]
    text = md.read_text()
    assert text.count("\n| ") == len(pt["layers"]) + 1  # header + one line per layer
    assert "recovery" in text and f"`{pt['layers'][0]['module']}`" in text
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_wrong_model_or_granularity_is_refused(ledgers, trained_like_model):
    from ssd_mnv1 import build_model
    from ssd_mnv1.export.layer_ledger import build_layer_ledger

    model, _, _, files, data, calib = ledgers
    torch.manual_seed(1)
    other = build_model(input_size=SIZE).eval()
    with pytest.raises(ValueError, match="matches no layer"):
        build_layer_ledger(other, files["pc"], files["fp32"], data, calib_images=calib, calib_count=2,
                           limit=1, progress=False)
    with pytest.raises(ValueError, match="per-channel weights"):
        build_layer_ledger(model, files["pc"], files["fp32"], data, calib_images=calib, per_tensor=True,
                           progress=False)
    with pytest.raises(ValueError, match="int8 file and a float32 file"):
        build_layer_ledger(model, files["fp32"], files["pc"], data, calib_images=calib, progress=False)


def test_pairing_does_not_depend_on_tensor_names(ledgers, tmp_path):
    """An int8 file whose tensors are all renamed (as a second onnx2tf run in one process numbers
    its ops on) pairs with the float file and the model exactly as before."""
    from ssd_mnv1.export.layer_ledger import _Graph, match_tensors
    from ssd_mnv1.tflite_file import read, to_bytes

    model, _, _, files, _, _ = ledgers
    renamed = read(files["pt"]).flatbuffer
    for t in renamed.subgraphs[0].tensors:
        t.name = b"other_run_" + (t.name or b"")
    (tmp_path / "renamed.tflite").write_bytes(to_bytes(renamed))
    f = _Graph(files["fp32"])
    before = [(m.int8_index, m.fp32_index, m.module) for m in match_tensors(model, _Graph(files["pt"]), f)]
    after = match_tensors(model, _Graph(tmp_path / "renamed.tflite"), f)
    assert [(m.int8_index, m.fp32_index, m.module) for m in after] == before
    assert all(m.tensor.startswith("other_run_") for m in after)
    assert len(before) > 60
