"""The offline memory plan (``ssd_mnv1.memory_plan``), int8 outputs (``export --int8-outputs``) and
the budget of a configuration without weights (``footprint --size``), with TFLite Micro's own
allocation report as the judge."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssd_mnv1.memory_plan import (Buffer, check_plan, compact_plan, embed_plan, lifetimes, live_peak, plan_bytes,
                                  read_plan, tflm_greedy_plan)
from ssd_mnv1.tflite_file import parse, read


def _chain() -> list[Buffer]:
    """The first ops of the detector at 224 (uint8 input, its int8 copy, stem, dw, first pw conv, ...)."""
    sizes = [150528, 150528, 100352, 100352, 200704, 50176, 100352, 16]
    return [Buffer(i, size, i, i + 1) for i, size in enumerate(sizes)]


def test_compact_plan_reaches_the_live_set_peak_where_tflms_tie_order_does_not():
    buffers = _chain()
    peak, scope, alive = live_peak(buffers)
    assert peak == 150528 + 150528 and scope == 1 and {b.tensor for b in alive} == {0, 1}
    plan = compact_plan(buffers)
    check_plan(buffers, plan)
    assert plan_bytes(buffers, plan) == peak
    assert plan_bytes(buffers, tflm_greedy_plan(buffers)) > peak  # the later of two equal buffers first


def test_a_plan_that_overlaps_live_tensors_is_refused_naming_them():
    buffers = _chain()
    plan = compact_plan(buffers)
    plan[1] = plan[0]  # the int8 copy over the uint8 input it is computed from
    with pytest.raises(ValueError, match=r"overlaps tensors 0 \[.*\) and 1 \[.*alive together at scopes 1-1"):
        check_plan(buffers, plan)


# ------------------------------------------------------------------------------ on a real --mcu export


@pytest.fixture(scope="module")
def mcu(tiny_mcu_export):
    pytest.importorskip("tflite_micro")
    return tiny_mcu_export


def _noise(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.slow
def test_mcu_export_embeds_a_plan_that_tflm_uses_and_that_changes_no_output(mcu, tmp_path):
    from ssd_mnv1.footprint_analysis import tflm_plan_bytes
    from ssd_mnv1.runners import TFLMRunner

    _, result, _ = mcu
    path = result.files["tflite-int8"]
    data = path.read_bytes()
    file = parse(data)
    buffers = lifetimes(file.main)
    plan = read_plan(file)
    assert plan is not None and set(plan) == {b.tensor for b in buffers}
    assert result.memory_plans["tflite-int8"]["plan_bytes"] == plan_bytes(buffers, plan) == live_peak(buffers)[0]
    greedy = tmp_path / "greedy.tflite"
    greedy.write_bytes(embed_plan(data, {}))  # every tensor left to TFLM's planner
    assert read_plan(read(greedy)) == {}
    planned, online = TFLMRunner(path), TFLMRunner(greedy)
    assert planned.arena_report().head_bytes == plan_bytes(buffers, plan) == tflm_plan_bytes(path)
    assert online.arena_report().head_bytes == plan_bytes(buffers, tflm_greedy_plan(buffers)) == tflm_plan_bytes(greedy)
    assert planned.arena_report().head_bytes < online.arena_report().head_bytes
    x = _noise(2, planned.input_size)
    for a, b in zip(planned(x), online(x)):
        assert np.array_equal(a, b)
    assert len(embed_plan(data, plan)) == len(data)  # a plan already there is replaced, not added


@pytest.mark.slow
def test_int8_outputs_are_the_float_files_integers_and_everything_reads_them(mcu, tmp_path, capsys):
    from ssd_mnv1.anchors import deployed_anchors
    from ssd_mnv1.export.compat import main as compat_main
    from ssd_mnv1.export.tflite_edit import int8_outputs
    from ssd_mnv1.footprint_analysis import tflite_architecture
    from ssd_mnv1.postprocess import postprocess
    from ssd_mnv1.postprocess_c import postprocess_c
    from ssd_mnv1.runners import TFLiteRunner, TFLMRunner

    _, result, _ = mcu
    path = result.files["tflite-int8"]
    out = tmp_path / "tiny_int8out.tflite"
    out.write_bytes(int8_outputs(path.read_bytes()))
    graph = read(out).main
    outputs = [graph.tensors[i] for i in graph.outputs]
    assert [t.name for t in outputs] == ["scores", "offsets"] and {t.type_name for t in outputs} == {"INT8"}
    assert outputs[0].quantization.per_tensor == (1 / 256, -128)
    assert "DEQUANTIZE" not in read(out).operator_names()
    na = outputs[0].shape[1]
    assert path.stat().st_size - out.stat().st_size >= na * 4  # the anchors' int8 constant is gone
    x = _noise(2, 192, seed=1)
    results = {}
    for runner in (TFLiteRunner, TFLMRunner):
        floats, ints = results[runner] = runner(path)(x), runner(out)(x)
        for a, b in zip(floats, ints):
            assert np.array_equal(a, b)
    assert np.array_equal(ints[2][0], deployed_anchors(192))
    assert tflite_architecture(out) == tflite_architecture(path)
    assert compat_main([str(out), "--size", "192"]) == 0
    assert "int8-output variant" in capsys.readouterr().out
    # the C post-processor fed TFLM's raw int8 outputs, as on the device, gives Python's detections of them
    ints = results[TFLMRunner][1]
    tflm = TFLMRunner(out)
    tflm.interpreter.set_input(x[:1], 0)
    tflm.interpreter.invoke()
    raw = [np.asarray(tflm.interpreter.get_output(i)) for i in range(2)]
    quant = {"scores": outputs[0].quantization.per_tensor, "offsets": outputs[1].quantization.per_tensor}
    for threshold in (0.5, 0.0):
        (py,) = postprocess(*[a[:1] for a in ints], score_threshold=threshold)
        (c,) = postprocess_c(raw[0], raw[1], deployed_anchors(192), quantization=quant, score_threshold=threshold)
        assert len(py) == len(c) and np.array_equal(py.boxes.numpy(), c.boxes.numpy())
        assert np.array_equal(py.scores.numpy(), c.scores.numpy()) and np.array_equal(py.labels.numpy(), c.labels.numpy())


@pytest.mark.slow
def test_bundle_of_an_int8_output_file_says_so_and_holds_the_anchors(mcu, tmp_path):
    from ssd_mnv1.anchors import int8_anchors
    from ssd_mnv1.export.c_bundle import write_c_bundle
    from ssd_mnv1.export.tflite_edit import int8_outputs

    _, result, _ = mcu
    out = tmp_path / "tiny_int8out.tflite"
    out.write_bytes(int8_outputs(result.files["tflite-int8"].read_bytes()))
    info = write_c_bundle(out, tmp_path, log=lambda *_: None)
    config = (info.folder / "model_config.h").read_text()
    assert "#define MODEL_OUTPUTS_FLOAT32 0" in config and "#define MODEL_OUTPUT_ANCHORS (-1)" in config
    scale, zero, codes = int8_anchors(192)
    assert f"#define MODEL_ANCHORS_INT8_ZERO_POINT ({zero})" in config
    anchors_c = (info.folder / "model_anchors.c").read_text()
    assert anchors_c.split("= {", 1)[1].replace("\n", "").replace(" ", "").startswith(
        ",".join(str(int(v)) for v in codes.reshape(-1)[:20]))


@pytest.mark.slow
def test_budget_without_weights_equals_the_arena_and_flash_of_a_file_exported_later(tiny_export, tmp_path, capsys):
    from ssd_mnv1.footprint import main as footprint_main
    from ssd_mnv1.footprint_analysis import tflm_footprint

    pytest.importorskip("tflite_micro")
    _, result, _ = tiny_export("budget_160_3cls", input_size=160, class_names=["person", "car", "dog"], mcu=True)
    measured = tflm_footprint(result.files["tflite-int8"])
    report = tmp_path / "budget.json"
    assert footprint_main(["--size", "160", "--classes", "3", "--ram", str(measured["arena_bytes"] / 1024),
                           "--flash", "10000", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    (budget,) = json.loads(out.strip().splitlines()[-1])["budgets"]
    assert json.loads(report.read_text()) == json.loads(out.strip().splitlines()[-1])
    assert budget["arena_bytes"] == measured["arena_bytes"] and budget["head_bytes"] == measured["head_bytes"]
    assert budget["flash_bytes"] == measured["flash_bytes"]
    assert budget["fits_ram"] is False and budget["fits_flash"] is True  # the margin does not fit the bare arena
    assert "| 160 |" in out and "**no**" in out


@pytest.mark.slow
def test_a_bundle_of_a_file_without_a_plan_gets_one_and_the_arena_it_gives(mcu, tmp_path):
    from ssd_mnv1.export.c_bundle import write_c_bundle
    from ssd_mnv1.runners import TFLMRunner

    _, result, _ = mcu
    bare = tmp_path / "bare_int8_mcu.tflite"
    bare.write_bytes(embed_plan(result.files["tflite-int8"].read_bytes(), {}))
    said = []
    info = write_c_bundle(bare, tmp_path, log=said.append)
    assert any("has no offline memory plan; the bundle's copy gets one" in line for line in said)
    planned = TFLMRunner(result.files["tflite-int8"]).arena_report()
    assert info.arena_measured == planned.arena_bytes < TFLMRunner(bare).arena_report().arena_bytes
    assert info.flatbuffer_bytes == result.files["tflite-int8"].stat().st_size


@pytest.mark.slow
def test_footprint_names_the_tensors_alive_at_the_peak(mcu):
    from ssd_mnv1.footprint_analysis import peak_tensors

    _, result, _ = mcu
    path = result.files["tflite-int8"]
    graph = read(path).main
    peak = peak_tensors(path)
    assert peak["bytes"] == live_peak(lifetimes(graph))[0] == sum(size for _, size in peak["tensors"])
    assert peak["op_name"] == "QUANTIZE" and peak["tensors"][0][0] == graph.tensors[graph.inputs[0]].name
    assert ("CONV_2D" in [name for _, name in peak["also_at"]])  # the first pointwise conv: 2 x 3 S^2 = 24 (S/2)^2
