"""The export chain (its accuracy ledger: :mod:`ssd_mnv1.export.ledger`).

checkpoint / .h5 -> PyTorch float (or QAT fake-quant -> stripped float on the int8 grid)
-> ONNX (checker + onnxruntime parity) -> onnx2tf SavedModel -> TFLite float32 -> TFLite int8.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ssd_mnv1.anchors import generate_anchors
from ssd_mnv1.fileio import atomic_path
from ssd_mnv1.quantization.calibration import as_batches, calibration_images, int8_simulation

from . import onnx_stage, tf_stage, tflite_edit

TARGETS = ("onnx", "onnx-qdq", "tflite-fp32", "tflite-int8", "c")
#: What each target needs written before it (a target list is the union of these).
_CHAIN = {"onnx": ("onnx",), "onnx-qdq": ("onnx", "onnx-qdq"), "tflite-fp32": ("onnx", "tflite-fp32"),
          "tflite-int8": ("onnx", "tflite-fp32", "tflite-int8"),
          "c": ("onnx", "tflite-fp32", "tflite-int8", "c")}  # the C bundle of the --mcu int8 file (c_bundle)


@dataclass
class ExportResult:
    files: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    onnx_parity: dict[str, float] = field(default_factory=dict)
    #: Per TFLite file (``tflite-fp32``, ``tflite-int8``): max |difference| of its outputs, taken in
    #: file order (scores, offsets, anchors: ST's contract), to the PyTorch model it was converted
    #: from (``pytorch-float``; ``pytorch-fake-quant`` for the int8 file) on the same uint8 pixels.
    tflite_parity: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The PyTorch models behind the files, in chain order: ``pytorch-float`` (as loaded),
    #: ``pytorch-equalized`` (when equalized), ``pytorch-fake-quant`` (what the int8 files run).
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    equalization: dict | None = None
    per_tensor: bool = False
    #: The ``--mcu`` variant: static batch 1, no batch-dependent op (TensorFlow Lite Micro loads it).
    mcu: bool = False
    #: With ``mcu`` and tflite-micro installed: the arena bytes TFLM allocated for the int8 file.
    tflm_arena_bytes: int | None = None
    #: Per ``mcu`` TFLite file: its offline memory plan's head bytes, TFLM's greedy planner's and the
    #: live-set peak (:func:`ssd_mnv1.memory_plan.plan_file`).
    memory_plans: dict[str, dict] = field(default_factory=dict)


def models_for_export(path: str | os.PathLike):
    """(float model to export, the QAT model it came from or None) from a ``.ckpt`` or an ``.h5``.

    A QAT model is exported through :func:`~ssd_mnv1.quantization.to_float`: folded weights on the
    int8 grid, from which the TFLite converter re-derives the same weight scales; one whose guard
    kept its post-training start, with its folded float weights, as that start's own export.
    """
    from ssd_mnv1.loading import load_model
    from ssd_mnv1.quantization import is_qat, to_float

    model = load_model(path).eval()
    if is_qat(model):
        guard = getattr(model, "qat_guard", None) or {}
        # the guard kept the post-training start: export it as the post-training export would
        return to_float(model, on_grid=guard.get("kept") != "ptq_start").eval(), model
    return model, None


def qat_guard_text(guard: dict | None) -> str:
    """What a QAT checkpoint holds, from its guard record (QuantizationAwareTraining.guard)."""
    if not guard:
        return "QAT checkpoint: the weights QAT ended with (the run had no guard against its post-training start)"
    which = ("the QAT weights, whose gain over the post-training start the guard's split resolves"
             if guard["kept"] == "qat" else
             "its post-training start: QAT did not end resolvably above it, and the guard kept the start")
    interval = (f", gain {guard['gain']:+.2f} [{guard['gain_low']:+.2f}, {guard['gain_high']:+.2f}]"
                if "gain" in guard else "")
    return (f"QAT checkpoint: holds {which} (ST-AP on {guard.get('data', 'the run validation set')}: start "
            f"{guard['start_st_ap']:.2f}, after QAT {guard['qat_st_ap']:.2f}{interval}); exported as "
            + ("trained" if guard["kept"] == "qat" else "the post-training export of that start"))


def _targets(to: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    wanted = (to,) if isinstance(to, str) else tuple(to)
    bad = [t for t in wanted if t not in TARGETS]
    if bad or not wanted:
        raise ValueError(f"--to must be one or more of {', '.join(TARGETS)}, got {', '.join(bad) or 'nothing'}")
    return tuple(t for t in TARGETS if any(t in _CHAIN[w] for w in wanted))


def export(model_path: str | os.PathLike, out_dir: str | os.PathLike, to: str | tuple[str, ...] = "tflite-int8", *,
           calib: str | os.PathLike | None = None, calib_count: int = 100, per_tensor: bool = False,
           equalize: bool | None = None, mcu: bool = False, int8_outputs: bool = False, memory_plan: bool = True,
           log=print) -> ExportResult:
    """Run the chain up to every target in ``to`` (each includes the stages it needs).

    Int8 targets quantize per channel, or per tensor. A float model exported per tensor is first
    equalized (:mod:`ssd_mnv1.quantization.equalize`: dead channels folded, layers equalized -
    both exact - then bias correction for the int8 files only); ``equalize`` False turns that off,
    True turns it on for per-channel too. A QAT checkpoint is exported as it was trained (its
    granularity must match ``per_tensor``; equalization does not apply).

    ``mcu``: the TFLite files have a static batch of 1 and the anchors as a plain constant (int8,
    RESHAPE, DEQUANTIZE) instead of one tiled over the runtime batch (SHAPE, STRIDED_SLICE, TILE), so that
    TensorFlow Lite Micro, which has no TILE kernel, loads them; same network, same three outputs
    and quantization. Their names end in ``_mcu``. With tflite-micro installed (the ``mcu`` extra)
    the int8 file is loaded and run in TFLM once, and its arena size recorded.

    ``c`` in ``to`` (needs ``mcu`` and the ``mcu`` extra): the int8 file's C bundle for a TFLM
    project, ``<stem>_int8_mcu_bundle/`` (:mod:`ssd_mnv1.export.c_bundle`).

    ``int8_outputs``: the int8 file's outputs are its int8 scores and offsets, without anchors
    (:func:`~ssd_mnv1.export.tflite_edit.int8_outputs`; name ending ``_int8out``). ``memory_plan``
    (default): the ``mcu`` files carry an offline memory plan at the live-set peak, which TFLM uses
    instead of its greedy planner (:mod:`ssd_mnv1.memory_plan`).
    """
    from ssd_mnv1.quantization.equalize import correct_bias, equalize as equalize_model
    from ssd_mnv1.quantization.qat import per_tensor_weights

    targets = _targets(to)
    if "c" in targets and not mcu:
        raise ValueError("--to c bundles the int8 file for TensorFlow Lite Micro, which loads only the --mcu "
                         "export: add --mcu")
    if int8_outputs and "tflite-int8" not in targets:
        raise ValueError("--int8-outputs applies to the int8 TFLite file: add --to tflite-int8 (or c)")
    quantized = any(t in ("onnx-qdq", "tflite-int8") for t in targets)
    if quantized and calib is None:
        raise ValueError(f"--to {' '.join(t for t in targets if t in ('onnx-qdq', 'tflite-int8'))} needs --calib DIR "
                         "(images for the int8 calibration)")
    model, qat = models_for_export(model_path)
    if qat is not None and per_tensor_weights(qat) != per_tensor:
        trained = "per-tensor" if per_tensor_weights(qat) else "per-channel"
        raise ValueError(f"{model_path}: a {trained} QAT checkpoint; export it "
                         f"{'with' if trained == 'per-tensor' else 'without'} --per-tensor")
    if qat is not None and equalize:
        raise ValueError(f"{model_path}: a QAT checkpoint is exported as trained; equalize its float model "
                         "before QAT (QuantizationAwareTraining.equalize)")
    if qat is not None:
        log(qat_guard_text(getattr(qat, "qat_guard", None)))
    equalize = (per_tensor if equalize is None else equalize) and qat is None and quantized
    size = model.input_size
    calib_data = calibration_images(calib, size, calib_count) if quantized else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(model_path).stem
    result = ExportResult(per_tensor=per_tensor, mcu=mcu)
    suffix = "_mcu" if mcu else ""
    result.models["pytorch-float"] = model

    int8_model = model  # the float model the int8 files are converted from
    if equalize:
        t0 = time.perf_counter()
        model, report = equalize_model(model)
        result.models["pytorch-equalized"] = model
        result.equalization = report.to_dict()
        int8_model = correct_bias(model, as_batches(calib_data), per_tensor)
        result.equalization["bias_correction_images"] = len(calib_data)
        result.timings["equalize"] = time.perf_counter() - t0
        log(f"equalized: {report.dead_channels} dead and {report.constant_channels} constant channels folded, "
            f"{report.scaled_channels} channels rescaled over {report.pairs} layer pairs ({report.held_channels} "
            f"left as they are: they may reach ReLU6's clip); worst weight range ratio "
            f"{report.worst_range_ratio_before:.1f} -> {report.worst_range_ratio_after:.1f}; bias correction on "
            f"{len(calib_data)} calibration images")
    if quantized:
        result.models["pytorch-fake-quant"] = int8_simulation(qat or int8_model, calib_data, per_tensor)

    t0 = time.perf_counter()
    onnx_path = onnx_stage.export_onnx(model, out_dir / f"{stem}.onnx")
    probe = np.stack([np.linspace(-1, 1, 3 * size * size, dtype=np.float32).reshape(3, size, size)] +
                     ([c[0].transpose(2, 0, 1) for c in calib_data[:3]] if calib_data else []))
    result.onnx_parity = onnx_stage.onnx_parity(onnx_path, model, probe)
    result.files["onnx"] = onnx_path
    result.timings["onnx"] = time.perf_counter() - t0
    log(f"onnx: {onnx_path} (onnxruntime vs PyTorch max |d| scores {result.onnx_parity['scores']:.2e}, "
        f"offsets {result.onnx_parity['offsets']:.2e})")

    if "onnx-qdq" in targets:
        from .qdq import export_qdq_onnx

        t0 = time.perf_counter()
        path = out_dir / f"{stem}_qdq{'_per_tensor' if per_tensor else ''}.onnx"
        result.files["onnx-qdq"] = export_qdq_onnx(result.models["pytorch-fake-quant"], path)
        result.timings["onnx-qdq"] = time.perf_counter() - t0
        log(f"onnx-qdq: {path} ({'per-tensor' if per_tensor else 'per-channel'} int8 weights, uint8 input)")

    if "tflite-fp32" not in targets:
        return result
    anchors = generate_anchors(model.spec).numpy()
    pixels = np.stack([np.broadcast_to(np.linspace(0, 255, size).round().astype(np.uint8)[None, :, None],
                                       (size, size, 3))] +
                      ([np.rint((c[0] + 1) * 127.5).clip(0, 255).astype(np.uint8) for c in calib_data[:3]]
                       if calib_data else []))
    with tempfile.TemporaryDirectory(prefix="ssd_mnv1_export_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        saved = _saved_model(onnx_path, tmp / "float", static_batch=mcu)
        final_saved = out_dir / f"saved_model{suffix}"
        shutil.rmtree(final_saved, ignore_errors=True)
        shutil.copytree(saved, tmp / "saved_model_copy")
        os.replace(tmp / "saved_model_copy", final_saved)
        result.files["saved_model"] = final_saved
        result.timings["onnx2tf"] = time.perf_counter() - t0
        log(f"saved_model: {final_saved}")

        t0 = time.perf_counter()
        fp32 = tflite_edit.finalize_outputs(tf_stage.to_tflite_float(saved), anchors, quantized=False,
                                            static_batch=mcu)
        if mcu and memory_plan:
            fp32 = _with_memory_plan(fp32, "tflite-fp32", result, log)
        result.files["tflite-fp32"] = _write(out_dir / f"{stem}_float32{suffix}.tflite", fp32)
        if mcu:
            _no_batch_ops(result.files["tflite-fp32"])
        result.tflite_parity["tflite-fp32"] = tflite_parity(result.files["tflite-fp32"], model, pixels)
        result.timings["tflite-fp32"] = time.perf_counter() - t0
        log(f"tflite-fp32: {result.files['tflite-fp32']} ({_parity_text(result.tflite_parity['tflite-fp32'])} "
            "vs PyTorch)")
        if "tflite-int8" not in targets:
            return result

        t0 = time.perf_counter()
        if int8_model is not model:  # bias-corrected weights: their own graph, the same way
            int8_onnx = onnx_stage.export_onnx(int8_model, tmp / "int8_source.onnx")
            saved = _saved_model(int8_onnx, tmp / "int8_source", static_batch=mcu)
        int8 = tf_stage.to_tflite_int8(saved, calib_data, per_tensor=per_tensor)
        int8 = tflite_edit.finalize_outputs(int8, anchors, quantized=True, static_batch=mcu)
        if int8_outputs:
            int8 = tflite_edit.int8_outputs(int8, "the int8 file")
        if mcu and memory_plan:
            int8 = _with_memory_plan(int8, "tflite-int8", result, log)
        name = f"{stem}_int8{'_per_tensor' if per_tensor else ''}{suffix}{'_int8out' if int8_outputs else ''}.tflite"
        result.files["tflite-int8"] = _write(out_dir / name, int8)
        result.timings["tflite-int8"] = time.perf_counter() - t0
        ops = tflite_edit.op_list(result.files["tflite-int8"])
        bad = sorted({op for op in ops if op.startswith("CUSTOM")})
        if bad:
            raise RuntimeError(f"int8 model contains custom/Flex ops {bad}")
        result.tflite_parity["tflite-int8"] = tflite_parity(result.files["tflite-int8"],
                                                            result.models["pytorch-fake-quant"], pixels)
        tflm = ""
        if mcu:
            result.tflm_arena_bytes = _check_static_batch(result.files["tflite-int8"])
            tflm = ("; not loaded in TFLite Micro (tflite-micro not installed: pip install -e '.[mcu]')"
                    if result.tflm_arena_bytes is None else
                    f"; loads and runs in TFLite Micro, arena {result.tflm_arena_bytes:,} bytes")
        log(f"tflite-int8: {result.files['tflite-int8']} ({len(calib_data)} calibration images, "
            f"{'per-tensor' if per_tensor else 'per-channel'}{', static batch 1' if mcu else ''}{tflm}; "
            f"{_parity_text(result.tflite_parity['tflite-int8'])} vs the PyTorch fake-quant model)")
        if "c" in targets:
            from .c_bundle import write_c_bundle

            t0 = time.perf_counter()
            bundle = write_c_bundle(result.files["tflite-int8"], out_dir, model.class_names, log=log)
            result.files["c"] = bundle.folder
            result.timings["c"] = time.perf_counter() - t0
    return result


def tflite_parity(path: str | os.PathLike, model: torch.nn.Module, pixels: np.ndarray) -> dict[str, float]:
    """Max |difference| per output between a TFLite file and ``model`` on uint8 NHWC ``pixels``.

    The file's outputs are taken by position (ST's evaluation code indexes them so) and compared
    with the model's (scores, offsets, anchors): a file with outputs out of ST's order, or with
    scores of another width (classes) or another anchor count (size), fails here rather than
    matching by content. A float file gets the pixels as x/127.5 - 1, a uint8 one the raw pixels;
    the model always gets x/127.5 - 1.
    """
    from ssd_mnv1.preprocess import normalize
    from ssd_mnv1.runners import make_interpreter
    from ssd_mnv1.runners.io import float_output

    it = make_interpreter(path, builtin=True)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    names = ("scores", "offsets", "anchors")
    diffs = {name: 0.0 for name in names}
    model = model.eval()
    for image in pixels:
        x = image[None].astype(np.uint8) if inp["dtype"] == np.uint8 else normalize(image[None])
        it.set_tensor(inp["index"], x)
        it.invoke()
        outs = [float_output(it.get_tensor(d["index"]), d["quantization"]) for d in it.get_output_details()]
        with torch.no_grad():
            ref = [t.numpy() for t in model(torch.from_numpy(normalize(image[None])).permute(0, 3, 1, 2))]
        ref = ref[:len(outs)] if len(outs) == 2 else ref  # an int8-output file: scores, offsets
        if len(outs) not in (2, 3) or any(a.shape != b.shape for a, b in zip(outs, ref)):
            raise RuntimeError(f"{path}: outputs {[list(a.shape) for a in outs]}, the PyTorch model's are "
                               f"{[list(b.shape) for b in ref]} (scores, offsets, anchors)")
        for name, a, b in zip(names, outs, ref):
            diffs[name] = max(diffs[name], float(np.abs(a - b).max()))
    return {name: diffs[name] for name in names[:len(outs)]}


def _parity_text(diffs: dict[str, float]) -> str:
    return "max |d| " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())


def _no_batch_ops(path: Path) -> None:
    batch_ops = sorted({op for op in tflite_edit.op_list(path) if op in tflite_edit.BATCH_OPS})
    if batch_ops:
        raise RuntimeError(f"{path}: the --mcu file still has batch-dependent ops {batch_ops}")


def _check_static_batch(path: Path) -> int | None:
    """Raise unless the ``--mcu`` file has batch 1, no batch-dependent op, and runs in LiteRT with
    XNNPACK and with the builtin kernels; then load and run it in TensorFlow Lite Micro when
    tflite-micro is installed: its arena bytes (None without it)."""
    from ssd_mnv1.runners import TFLiteRunner
    from ssd_mnv1.runners import TFLMRunner, tflm_available
    from ssd_mnv1.tflite_file import read as read_tflite

    _no_batch_ops(path)
    runners = [TFLiteRunner(path), TFLiteRunner(path, builtin=True)]
    graph = read_tflite(path).main
    dims = [list(graph.tensors[i].signature) for i in graph.inputs + graph.outputs]
    if any(d[0] != 1 for d in dims):
        raise RuntimeError(f"{path}: the --mcu file must have batch 1 on every input and output, has {dims}")
    if tflm_available():
        runners.append(TFLMRunner(path))
    size = runners[0].input_size
    x = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    for runner in runners:
        runner(x)
    return runners[2].arena_report().arena_bytes if len(runners) > 2 else None


def _saved_model(onnx_path: Path, workdir: Path, *, static_batch: bool = False) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = onnx_stage.prepare_for_onnx2tf(onnx_path, workdir / "for_onnx2tf.onnx", static_batch=static_batch)
    return tf_stage.onnx_to_saved_model(prepared, workdir / "saved_model", workdir / "onnx2tf")


def _with_memory_plan(data: bytes, target: str, result: ExportResult, log) -> bytes:
    from ssd_mnv1.memory_plan import plan_file

    planned, stats = plan_file(data, target)
    result.memory_plans[target] = stats
    log(f"{target}: offline memory plan {stats['plan_bytes']:,} B of activations (TFLM's greedy planner: "
        f"{stats['greedy_bytes']:,} B; live-set peak {stats['live_peak_bytes']:,} B)")
    return planned


def _write(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------- ledger
