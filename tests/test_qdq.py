"""QDQ ONNX export (export/qdq.py) run with the real onnx checker and onnxruntime, and the ONNX
runner on QDQ files. A small seeded model at 192, calibrated on a few real val images."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from ssd_mnv1.layers import ConvBN
from ssd_mnv1.preprocess import INPUT_SCALE, INPUT_ZERO_POINT
from ssd_mnv1.quantization.qat import ActivationQuantizer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, numpy_helper  # noqa: E402

from ssd_mnv1.export.qdq import export_qdq_onnx  # noqa: E402
from ssd_mnv1.export.qdq_audit import compare_scales, format_scale_report, qdq_parity  # noqa: E402
from ssd_mnv1.quantization.calibration import int8_simulation  # noqa: E402

SIZE = 192
NA = 3830  # anchors at 192
CALIB = 8


@pytest.fixture(scope="module")
def calib_dir(coco_person_val):
    return coco_person_val / "images"


@pytest.fixture(scope="module")
def val_pixels(calib_dir):
    """uint8 NHWC val images as the device gets them (ST's nearest resize)."""
    from ssd_mnv1.preprocess import load_image, resize

    files = sorted(calib_dir.iterdir())[-6:]  # not the calibration images' order, other pixels
    return np.stack([resize(load_image(p), SIZE) for p in files])


@pytest.fixture(scope="module")
def calibration(calib_dir):
    from ssd_mnv1.quantization.calibration import calibration_images

    return calibration_images(calib_dir, SIZE, CALIB)


@pytest.fixture(scope="module", params=[False, True], ids=["per-channel", "per-tensor"])
def qdq(request, tmp_path_factory, trained_like_model, calibration):
    model = int8_simulation(trained_like_model(SIZE), calibration, per_tensor=request.param)
    path = export_qdq_onnx(model, tmp_path_factory.mktemp("qdq") / "model_qdq.onnx")
    return model, path, onnx.load(str(path))


def _graph_index(proto):
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    return inits, producer


def _convs(proto):
    return [n for n in proto.graph.node if n.op_type == "Conv"]


def test_checked_file_has_st_io_contract(qdq):
    model, path, proto = qdq
    onnx.checker.check_model(proto, full_check=True)
    (inp,) = proto.graph.input
    assert inp.name == "input" and inp.type.tensor_type.elem_type == TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, SIZE, SIZE]
    inits, _ = _graph_index(proto)
    (first,) = [n for n in proto.graph.node if "input" in n.input]
    assert first.op_type == "DequantizeLinear"
    assert inits[first.input[1]] == np.float32(INPUT_SCALE)
    assert inits[first.input[2]].dtype == np.uint8 and inits[first.input[2]] == INPUT_ZERO_POINT
    outs = proto.graph.output
    assert [o.name for o in outs] == ["scores", "offsets", "anchors"]
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in outs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    res = session.run(None, {"input": np.zeros((1, 3, SIZE, SIZE), np.uint8)})
    assert [r.shape for r in res] == [(1, NA, 2), (1, NA, 4), (1, NA, 4)]
    assert np.array_equal(res[2][0], model.anchors.numpy())


def test_weights_int8_biases_int32_with_the_models_scales(qdq):
    """Every conv reads int8 weights with the scales WeightQuantizer gives the BN-folded weights,
    zero point 0, and an int32 bias at input scale x weight scale; no float tensor of conv weight
    rank is left. Convs are named after their module by the exporter (``/neck/lateral.3/Conv``)."""
    model, _, proto = qdq
    inits, producer = _graph_index(proto)
    assert not [k for k, v in inits.items() if v.ndim == 4 and v.dtype != np.int8]
    blocks = {"/" + re.sub(r"\.(?!\d)", "/", name) + "/Conv": m for name, m in model.named_modules()
              if isinstance(m, ConvBN)}
    convs = {c.name: c for c in _convs(proto)}
    assert len(blocks) == 46 and set(convs) == set(blocks)
    for name, block in blocks.items():
        conv = convs[name]
        w_dq, b_dq, x_dq = (producer[conv.input[i]] for i in (1, 2, 0))
        assert w_dq.op_type == b_dq.op_type == x_dq.op_type == "DequantizeLinear"
        q, scale, zp = (inits[w_dq.input[i]] for i in range(3))
        assert q.dtype == np.int8 and q.min() >= -127 and not zp.any()
        with torch.no_grad():
            weight, _ = block.folded_weight_and_bias()
            expected = block.weight_quant.scales(weight).numpy()
            fq = block.weight_quant(weight).numpy()
        if block.weight_quant.per_tensor:
            assert scale.ndim == 0 and scale == expected[0]
        else:
            assert np.array_equal(scale, expected)
        assert q.shape == fq.shape and np.array_equal(q * scale.reshape(-1, 1, 1, 1), fq)
        bias_q, bias_scale = inits[b_dq.input[0]], inits[b_dq.input[1]]
        assert bias_q.dtype == np.int32 and len(b_dq.input) == 2
        assert np.array_equal(bias_scale, (inits[x_dq.input[1]] * scale).astype(np.float32))


def test_every_activation_quantizer_is_a_qdq_pair(qdq):
    """Each quantizer's (scale, zero point) is a QuantizeLinear -> DequantizeLinear pair of the file,
    int8 zero points; the softmax output is 1/256, -128 and feeds the scores."""
    model, _, proto = qdq
    inits, producer = _graph_index(proto)
    pairs = []
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear":
            assert inits[n.input[2]].dtype == np.int8 and inits[n.input[1]].ndim == 0
            pairs.append((float(inits[n.input[1]]), int(inits[n.input[2]])))
    wanted = [(float(s), int(z)) for s, z in (q.qparams() for q in model.modules()
                                              if isinstance(q, ActivationQuantizer))]
    head_convs = len(model.head.cls) + len(model.head.box)  # quantized at their concatenation's scale
    assert len(wanted) == 46 - head_convs + 1 + len(model.neck.add_quant) + 2 + 1  # convs, GAP, adds, concats, softmax
    for p in set(wanted):
        assert pairs.count(p) >= wanted.count(p), p
    scores_dq = producer["scores"]
    scores_q = producer[scores_dq.input[0]]
    assert producer[scores_q.input[0]].op_type == "Softmax"
    assert (float(inits[scores_q.input[1]]), int(inits[scores_q.input[2]])) == (1 / 256, -128)


def test_onnxruntime_tracks_the_fake_quant_model(qdq, val_pixels):
    """onnxruntime on raw pixels vs the fake-quant model on the same pixels, real images.

    Not bit-exact by design: the file stores int32 biases (TFLite's rounding, up to half a step of
    input x weight scale) and requantizes the bilinear Resize output to its input's grid (TFLite's
    int8 resize; the QAT model leaves it float). Those 1-LSB flips travel through the top-down
    adds: on this seeded random-weight model (30 val images) about a third of the scores and
    offsets move by one int8 step, about 1 % by two or three, none by more. Allowed: 4 steps at
    most, and at most 3 % of the values off by more than one step.
    """
    model, path, _ = qdq
    box_step = float(model.head.box_quant.qparams()[0])
    diffs = qdq_parity(path, model, val_pixels)
    assert diffs["scores"] <= 4 / 256 + 1e-6
    assert diffs["offsets"] <= 4 * box_step * (1 + 1e-5)
    from ssd_mnv1.runners import OnnxRunner, TorchRunner

    onnx_out = OnnxRunner(path)(val_pixels)
    torch_out = TorchRunner(model)(val_pixels)
    assert np.mean(np.abs(onnx_out[0] - torch_out[0]) > 1.5 / 256) < 0.03
    assert np.mean(np.abs(onnx_out[1] - torch_out[1]) > 1.5 * box_step) < 0.03


def test_per_tensor_has_one_scale_per_conv(qdq):
    model, _, proto = qdq
    inits, producer = _graph_index(proto)
    sizes = {inits[producer[c.input[1]].input[1]].size for c in _convs(proto)}
    per_tensor = any(m.weight_quant.per_tensor for m in model.modules() if isinstance(m, ConvBN))
    if per_tensor:
        assert sizes == {1}
    else:
        assert min(sizes) > 1


def test_runner_evaluates_and_predicts_with_a_qdq_file(qdq, coco_person_val, tmp_path, capsys):
    from ssd_mnv1.evaluate import main as evaluate_main
    from ssd_mnv1.prediction import predict_image
    from ssd_mnv1.runners import open_runner

    model, path, _ = qdq
    runner = open_runner(path)
    assert runner.name == "onnx-qdq" and runner.input_size == SIZE
    assert open_runner(path, int8_input="st").input_quantization == (pytest.approx(INPUT_SCALE), INPUT_ZERO_POINT)
    assert evaluate_main([str(path), "--data", str(coco_person_val), "--limit", "4", "--workers", "0",
                          "--json", str(tmp_path / "m.json")]) == 0
    assert "onnx-qdq" in capsys.readouterr().out
    # predict's path up to drawing (an untrained model's inverted boxes break predict's drawing,
    # whatever the file format)
    image = sorted((coco_person_val / "images").iterdir())[0]
    _, det = predict_image(runner, image, score=0.5, iou=0.5, max_det=100)
    assert det.boxes.shape[-1] == 4


def test_float_onnx_still_runs_float(tmp_path, trained_like_model, val_pixels):
    from ssd_mnv1.export.onnx_stage import export_onnx
    from ssd_mnv1.runners import OnnxRunner, TorchRunner

    model = trained_like_model(SIZE)
    runner = OnnxRunner(export_onnx(model, tmp_path / "float.onnx"))
    assert runner.name == "onnx" and not runner.quantized
    assert np.abs(runner(val_pixels[:2])[0] - TorchRunner(model)(val_pixels[:2])[0]).max() < 1e-4


def test_rejects_float_and_uncalibrated_models(tmp_path, trained_like_model):
    from ssd_mnv1.quantization import prepare_qat

    model = trained_like_model(SIZE)
    with pytest.raises(ValueError, match="prepare_qat"):
        export_qdq_onnx(model, tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="no range"):
        export_qdq_onnx(prepare_qat(model), tmp_path / "b.onnx")
    with pytest.raises(ValueError, match="calibration images"):
        int8_simulation(model, [])
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def tflite_pair(tmp_path_factory, trained_like_model, calib_dir, calibration):
    """An int8 TFLite and a QDQ file from one export (~1 min) of a float model."""
    pytest.importorskip("onnx2tf")
    from ssd_mnv1.checkpoint import save_checkpoint
    from ssd_mnv1.export.pipeline import export

    root = tmp_path_factory.mktemp("qdq_vs_tflite")
    model = trained_like_model(SIZE)
    ckpt = save_checkpoint(model, root / "tiny.ckpt")
    files = export(ckpt, root / "out", ("tflite-int8", "onnx-qdq"), calib=calib_dir, calib_count=CALIB,
                   log=lambda *_: None).files
    return files["onnx-qdq"], files["tflite-int8"]


@pytest.mark.slow
def test_qdq_carries_the_int8_tflite_scales(tflite_pair):
    """Same float model, same calibration images: every conv pairs with a TFLite conv by its int8
    weights, and weight, bias, input and backbone output scales agree (the TFLite converter folds BN
    in its own float order, so a weight element may round the other way and scales differ in the
    last bits), and so do every conv output's (the head convs at their concatenation's scale, the
    laterals covering their sums, as the QAT model simulates).
    """
    report = compare_scales(*tflite_pair)
    print(format_scale_report(report))
    assert report["matched"] == report["qdq_convs"] == report["tflite_convs"] == 46
    assert report["max_weight_elements_differing"] <= 4
    assert report["max_weight_scale_rel"] < 1e-5
    assert report["max_bias_scale_rel"] < 1e-4
    assert report["max_input_scale_rel"] < 1e-3 and report["max_input_zp_diff"] <= 1
    for row in report["convs"]:
        assert row["output_scale_rel"] < 1e-3 and abs(row["output_zp_diff"]) <= 1, row
    for k, v in report["concat_outputs"].items():
        assert v["scale_rel"] < 1e-3 and abs(v["zp_diff"]) <= 1, (k, v)
    assert report["input"]["qdq"] == (pytest.approx(INPUT_SCALE), INPUT_ZERO_POINT)
    assert report["input"]["tflite"] == (pytest.approx(INPUT_SCALE), INPUT_ZERO_POINT)
    assert report["softmax_output"]["qdq"] == report["softmax_output"]["tflite"] == (1 / 256, -128)


def test_qdq_file_runs_on_integer_kernels_without_int16_saturation_or_as_the_spec_defines_it(qdq, tmp_path):
    """evaluate/predict run a QDQ file on onnxruntime's integer kernels (QLinearConv), with
    ``session.x64quantprecision`` (no int16 saturation on x86 CPUs without VNNI);
    ``qdq_arithmetic="float"`` runs the ONNX spec's definition: float Conv between DQ and Q."""
    import onnx

    from ssd_mnv1.runners import OnnxRunner, onnx_session

    _, path, _ = qdq
    ran = {}
    for arithmetic in ("int8", "float"):
        session = onnx_session(path, qdq_arithmetic=arithmetic, optimized_model=tmp_path / f"{arithmetic}.onnx")
        assert session.get_session_options().get_session_config_entry("session.x64quantprecision") == "1"
        ran[arithmetic] = {n.op_type for n in onnx.load(str(tmp_path / f"{arithmetic}.onnx")).graph.node}
    assert "QLinearConv" in ran["int8"]
    assert "Conv" in ran["float"] and "QLinearConv" not in ran["float"]
    assert OnnxRunner(path).session.get_session_options().get_session_config_entry("session.x64quantprecision") == "1"
    with pytest.raises(ValueError, match="qdq_arithmetic"):
        OnnxRunner(path, qdq_arithmetic="fp16")


@pytest.mark.slow
def test_int8_runtimes_score_one_export_under_every_runtime(tiny_mcu_export, coco_person_val, tmp_path):
    """:func:`compare_int8_runtimes` (``bench/int8_runtimes.py``) on an ``--mcu`` int8 TFLite + QDQ
    pair: six runtimes (three TFLite kernel sets; onnxruntime's integer kernels, the spec's float,
    onnxruntime's defaults), every pair's agreement, one JSON."""
    import shutil

    from ssd_mnv1.export.ledger import compare_int8_runtimes, int8_runtimes_table
    from ssd_mnv1.export.pipeline import export

    _, result, root = tiny_mcu_export
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(result.files["tflite-int8"], folder)
    export(root / "tiny.ckpt", folder, ("onnx-qdq",), calib=root / "calib", calib_count=6, log=lambda *_: None)
    logged = []
    report = compare_int8_runtimes(folder, coco_person_val, limit=3, log=logged.append)
    assert report["images"] == 3 and len(report["st_ap_20"]) == 6 and len(logged) == 6
    assert len(report["agreement_above_0.5"]) == 15
    assert all(0.0 <= a <= 1.0 for a in report["agreement_above_0.5"].values())
    assert len(int8_runtimes_table(report)) == 2 + 15
    with pytest.raises(ValueError, match=r"expected one \*_qdq\*.onnx file, found 0"):
        compare_int8_runtimes(result.files["tflite-int8"].parent, coco_person_val)  # no QDQ file there
