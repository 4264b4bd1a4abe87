"""What each stage of an export costs: the per-stage accuracy ledger (ST-AP, box agreement, output
differences of PyTorch float -> fake-quant -> ONNX -> TFLite float32 -> int8 -> TFLM) and the same int8
file scored under every runtime (``compare_int8_runtimes``, behind ``bench/int8_runtimes.py``).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import torch

from ssd_mnv1.anchors import generate_anchors
from ssd_mnv1.fileio import atomic_write_text

from . import tflite_edit
from .pipeline import ExportResult


class RecordingRunner:
    """Pass-through runner that keeps the scores and offsets it returned, so that the ledger's
    stage-to-stage differences cover every evaluated image without running a model twice
    (:meth:`outputs`: all of them, in the order evaluated)."""

    def __init__(self, runner):
        self.runner, self.name, self.input_size = runner, runner.name, runner.input_size
        self.batches: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, images):
        outs = self.runner(images)
        self.batches.append((outs[0], outs[1]))
        return outs

    def outputs(self) -> tuple[np.ndarray, np.ndarray]:
        return tuple(np.concatenate([b[k] for b in self.batches]) for k in range(2))


#: Detections compared box for box between stages: ST-2025 post-processing, top 100 per image.
AGREEMENT_TOP_K = 100


#: Score above which detections are what a deployment keeps (ST's firmware: 0.5-0.6).
CONFIDENT_SCORE = 0.5


def top_detections(outs, anchors: np.ndarray, score_threshold: float = 0.001) -> list:
    """Detections of raw ``(scores, offsets)`` that the ledger compares box for box: ST-2025
    post-processing, the top :data:`AGREEMENT_TOP_K` per image above ``score_threshold``."""
    from ssd_mnv1.postprocess import postprocess

    return postprocess(outs[0], outs[1], anchors, variant="st25", max_detections=AGREEMENT_TOP_K,
                       score_threshold=score_threshold)


def _agreement(a: list, b: list) -> float:
    from ssd_mnv1.metrics import detection_agreement

    return detection_agreement(a, b).fraction


def _max_diffs(a, b) -> tuple[float, float]:
    return float(np.abs(a[0] - b[0]).max()), float(np.abs(a[1] - b[1]).max())


#: Stage -> the stage its confident detections are compared with (the step the ledger vouches for).
_CONFIDENT_VERSUS = {"pytorch-equalized": ("pytorch-float",), "tflite-int8": ("pytorch-fake-quant",),
                     "onnx-qdq": ("tflite-int8", "pytorch-fake-quant")}


def _ledger_stages(result: ExportResult, int8_input: str) -> list[tuple[str, object, Path | None]]:
    """(name, runner, file) in chain order: float models and files, then the int8 simulation and files."""
    from ssd_mnv1.runners import OnnxRunner, TFLiteRunner, TorchRunner

    stages = [(name, TorchRunner(result.models[name], name), None)
              for name in ("pytorch-float", "pytorch-equalized") if name in result.models]
    stages.append(("onnx", OnnxRunner(result.files["onnx"]), result.files["onnx"]))
    if "tflite-fp32" in result.files:
        stages.append(("tflite-fp32", TFLiteRunner(result.files["tflite-fp32"]), result.files["tflite-fp32"]))
    if "pytorch-fake-quant" in result.models:
        model = result.models["pytorch-fake-quant"]
        stages.append(("pytorch-fake-quant", TorchRunner(model, "pytorch-fake-quant"), None))
    if "tflite-int8" in result.files:
        path = result.files["tflite-int8"]
        stages.append(("tflite-int8", TFLiteRunner(path, int8_input=int8_input), path))
    if "onnx-qdq" in result.files:
        stages.append(("onnx-qdq", OnnxRunner(result.files["onnx-qdq"]), result.files["onnx-qdq"]))
    return stages


def build_ledger(model_path, result: ExportResult, data: str | os.PathLike, *, limit: int | None = None,
                 int8_input: str = "raw") -> dict:
    """Evaluate every stage the export produced on ``data`` with the project's evaluator.

    Each stage's max |Δ| scores/offsets is taken over all evaluated images, both to the previous
    stage (where a conversion step goes wrong) and to the PyTorch float model (the end-to-end
    parity the exporter promises: ≤ 1e-4 for float stages). Detections scoring above
    :data:`CONFIDENT_SCORE` are compared box for box where a step promises to keep them: the
    equalized model with the float one, the int8 file with its fake-quant model, the QDQ ONNX
    with the int8 TFLite.

    The dataset is opened with the model's class names (its categories of those names, in the
    model's order). With more than one class, every stage also has its ST-AP per class
    (``st_ap_20_per_class``: class name -> ST-AP, None for a class without ground truth in the
    evaluated images), and the markdown a per-class table.
    """
    from ssd_mnv1.data import open_dataset
    from ssd_mnv1.evaluation import evaluate, resize_all
    from ssd_mnv1.runners import TFLiteRunner

    float_model = result.models["pytorch-float"]
    class_names = tuple(getattr(float_model, "class_names", ("person",)))
    per_class = len(class_names) > 1
    dataset = open_dataset(data, class_names=class_names)
    images = resize_all(dataset, float_model.input_size, progress=False)
    if limit is not None:
        images = images[:limit]
    rows, previous, reference = [], None, None
    dets: dict[str, list] = {}
    confident: dict[str, list] = {}
    anchors = generate_anchors(float_model.spec).numpy()
    for name, runner, path in _ledger_stages(result, int8_input):
        recording = RecordingRunner(runner)
        ev = evaluate(recording, dataset, ("st20",), images=images, limit=len(images), progress=False,
                      class_names=class_names)
        outs = recording.outputs()
        row = {"stage": name, "st_ap_20": ev.st_ap["st20"], "images": ev.images,
               **({"st_ap_20_per_class": _per_class_ap(ev, class_names)} if per_class else {}),
               "file": str(path) if path else None,
               "size_bytes": Path(path).stat().st_size if path else _param_bytes(runner.model),
               "max_diff_scores": None, "max_diff_offsets": None,
               "max_diff_vs_float_scores": None, "max_diff_vs_float_offsets": None}
        dets[name] = top_detections(outs, anchors)
        row["det_agreement_prev"] = row["det_agreement_vs_fake_quant"] = None
        if previous is not None:
            row["max_diff_scores"], row["max_diff_offsets"] = _max_diffs(outs, previous)
            row["max_diff_vs_float_scores"], row["max_diff_vs_float_offsets"] = _max_diffs(outs, reference)
            row["det_agreement_prev"] = _agreement(dets[name], dets[rows[-1]["stage"]])
        if "pytorch-fake-quant" in dets and name != "pytorch-fake-quant":
            row["det_agreement_vs_fake_quant"] = _agreement(dets[name], dets["pytorch-fake-quant"])
        confident[name] = top_detections(outs, anchors, CONFIDENT_SCORE)
        versus = next((v for v in _CONFIDENT_VERSUS.get(name, ()) if v in confident), None)
        if versus is not None:
            row["confident_agreement_vs"] = versus
            row["confident_det_agreement"] = _agreement(confident[name], confident[versus])
        if name == "tflite-int8":
            row["ops"] = tflite_edit.op_list(path)
            # TFLite's own noise floor: the same file under LiteRT's builtin kernels instead of XNNPACK
            # (the key keeps its old name). Neither is the device's arithmetic: TFLite Micro's is, and
            # it equals TFLite's reference kernels (OpResolverType.BUILTIN_REF) bit for bit.
            ref = RecordingRunner(TFLiteRunner(path, int8_input=int8_input, builtin=True))
            row["st_ap_20_reference_kernels"] = evaluate(ref, dataset, ("st20",), images=images, limit=len(images),
                                                         progress=False, class_names=class_names).st_ap["st20"]
            ref_outs = ref.outputs()
            row["kernel_floor_max_diff_scores"], row["kernel_floor_max_diff_offsets"] = _max_diffs(outs, ref_outs)
            row["kernel_floor_det_agreement"] = _agreement(dets[name], top_detections(ref_outs, anchors))
            row["st_ap_20_tflm"] = (_tflm_st_ap(path, int8_input, dataset, images, class_names)
                                    if result.mcu else None)
        rows.append(row)
        previous = outs
        reference = outs if reference is None else reference
    return {"model": str(model_path), "data": str(data), "input_size": float_model.input_size,
            "class_names": list(class_names),
            "int8_input": int8_input, "diff_images": len(images),
            "weights": "per-tensor" if result.per_tensor else "per-channel",
            "equalization": result.equalization, "stages": rows,
            "timings_s": {k: round(v, 2) for k, v in result.timings.items()}}


def _per_class_ap(ev, class_names: tuple[str, ...]) -> dict[str, float | None]:
    """ST-AP (st20, percent) of each class of an evaluation, by name; None for a class that has no
    ground truth among the evaluated images (ST-AP leaves it out of the mean)."""
    return {name: (ev.per_class.get(name) or {}).get("st_ap_20") for name in class_names}


def _tflm_st_ap(path: Path, int8_input: str, dataset, images: np.ndarray,
                class_names: tuple[str, ...] = ("person",)) -> float | None:
    """ST-AP (st20) of an ``--mcu`` file under TensorFlow Lite Micro (None without tflite-micro)."""
    from ssd_mnv1.evaluation import evaluate
    from ssd_mnv1.runners import TFLMRunner, tflm_available

    if not tflm_available():
        return None
    return evaluate(TFLMRunner(path, int8_input=int8_input), dataset, ("st20",), images=images, limit=len(images),
                    progress=False, class_names=class_names).st_ap["st20"]


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _one_file(folder: Path, pattern: str) -> Path:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such export folder")
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise ValueError(f"{folder}: expected one {pattern} file, found {len(found)}")
    return found[0]


def _onnxruntime_defaults(runner):
    """``runner`` on a session with onnxruntime's default options (no ``session.x64quantprecision``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    runner.session = ort.InferenceSession(str(runner.path), opts, providers=["CPUExecutionProvider"])
    return runner


def compare_int8_runtimes(export_dir: str | os.PathLike, data: str | os.PathLike, *, limit: int | None = None,
                          log=print) -> dict:
    """One int8 model, several runtimes: ST-AP 2.0 of the int8 TFLite and the QDQ ONNX of one export
    under each runtime's kernels, and how far their confident detections agree pairwise.

    ``export_dir`` holds one ``*_int8*.tflite`` and one ``*_qdq*.onnx`` written by the same export
    (``--to tflite-int8 onnx-qdq [--mcu]``). Runtimes: LiteRT with XNNPACK, LiteRT's builtin kernels,
    TFLite's reference kernels (= TensorFlow Lite Micro bit for bit; ``--mcu`` files only), and
    onnxruntime on the QDQ graph three ways: its integer kernels with ``session.x64quantprecision``
    (what ``evaluate`` runs), the ONNX spec's float definition (``qdq_arithmetic="float"``) and
    onnxruntime's own defaults (integer kernels that, on x86 CPUs without VNNI, saturate int16 sums
    of u8 x s8 products). Agreement: detections scoring > :data:`CONFIDENT_SCORE`
    (:func:`top_detections`) matched one to one at IoU >= 0.5, as in the ledger. ``log`` gets each
    runtime's ST-AP as it is measured. Returns the JSON report (``st_ap_20`` by runtime name and
    ``agreement_above_<score>`` by pair of names); :func:`int8_runtimes_table` renders the agreement.
    """
    from ssd_mnv1.data import open_dataset
    from ssd_mnv1.evaluation import evaluate, resize_all
    from ssd_mnv1.metrics import detection_agreement
    from ssd_mnv1.runners import OnnxRunner, TFLiteRunner

    folder = Path(export_dir)
    tflite, qdq = _one_file(folder, "*_int8*.tflite"), _one_file(folder, "*_qdq*.onnx")
    runners = {"TFLite XNNPACK": TFLiteRunner(tflite), "TFLite builtin": TFLiteRunner(tflite, builtin=True)}
    if tflite.stem.endswith("_mcu"):
        runners["TFLite reference (= TFLM)"] = TFLiteRunner(tflite, reference=True)
    runners["QDQ, onnxruntime int8 (evaluate's)"] = OnnxRunner(qdq)
    runners["QDQ, onnxruntime float (ONNX spec)"] = OnnxRunner(qdq, qdq_arithmetic="float")
    runners["QDQ, onnxruntime defaults"] = _onnxruntime_defaults(OnnxRunner(qdq))
    dataset = open_dataset(data)
    size = next(iter(runners.values())).input_size
    images = resize_all(dataset, size, progress=False, limit=limit)
    st_ap, confident = {}, {}
    for name, runner in runners.items():
        recording = RecordingRunner(runner)
        st_ap[name] = evaluate(recording, dataset, ("st20",), images=images, limit=len(images),
                               progress=False).st_ap["st20"]
        anchors = runner(images[:1])[2][0]  # each file's own anchor output, as a device decodes with
        confident[name] = top_detections(recording.outputs(), anchors, CONFIDENT_SCORE)
        log(f"{name:40s} ST-AP {st_ap[name]:.2f}")
    pairs = {f"{a} | {b}": detection_agreement(confident[a], confident[b]).fraction
             for a, b in itertools.combinations(runners, 2)}
    return {"tflite": str(tflite), "qdq": str(qdq), "images": len(images), "st_ap_20": st_ap,
            f"agreement_above_{CONFIDENT_SCORE}": pairs}


def int8_runtimes_table(report: dict) -> list[str]:
    """Readable lines of a :func:`compare_int8_runtimes` report's pairwise agreement."""
    lines = ["", f"boxes > {CONFIDENT_SCORE} agree ({report['images']} images):"]
    for pair, fraction in report[f"agreement_above_{CONFIDENT_SCORE}"].items():
        lines.append(f"  {100 * fraction:6.2f} %  {pair}")
    return lines


def ledger_markdown(ledger: dict) -> str:
    lines = [f"# Export ledger: `{ledger['model']}`", "",
             f"ST-AP (st20, IoU 0.4) on `{ledger['data']}` ({ledger['stages'][0]['images']} images, "
             f"{ledger['input_size']}x{ledger['input_size']}); max |Δ| over {ledger['diff_images']} images, to the "
             f"previous stage and to PyTorch float; int8 input: {ledger['int8_input']} uint8 pixels. "
             f"Box agreement: top-{AGREEMENT_TOP_K} detections per image (ST-2025 post-processing) matched "
             "one to one at IoU >= 0.5, over the larger box count.", "",
             "| stage | ST-AP | Δ ST-AP vs float | max Δ scores (prev / float) | max Δ offsets (prev / float) "
             "| boxes agree (prev / fake-quant) | size |",
             "|---|---|---|---|---|---|---|"]
    base = ledger["stages"][0]["st_ap_20"]
    for r in ledger["stages"]:
        fmt = (lambda v: "–" if v is None else f"{v:.2e}")
        scores = f"{fmt(r['max_diff_scores'])} / {fmt(r.get('max_diff_vs_float_scores'))}"
        offsets = f"{fmt(r['max_diff_offsets'])} / {fmt(r.get('max_diff_vs_float_offsets'))}"
        pct = (lambda v: "–" if v is None else f"{100 * v:.2f} %")
        agree = f"{pct(r.get('det_agreement_prev'))} / {pct(r.get('det_agreement_vs_fake_quant'))}"
        lines.append(f"| {r['stage']} | {r['st_ap_20']:.2f} | {r['st_ap_20'] - base:+.2f} | {scores} | {offsets} | "
                     f"{agree} | {r['size_bytes'] / 1024:.1f} KiB |")
    names = ledger.get("class_names") or []
    if len(names) > 1 and all("st_ap_20_per_class" in r for r in ledger["stages"]):
        fmt_ap = (lambda v: "–" if v is None else f"{v:.2f}")
        lines += ["", f"ST-AP per class (st20; – : no ground truth of that class in the {ledger['stages'][0]['images']} "
                  "images); the ST-AP above is the mean over the classes with ground truth.", "",
                  "| stage | " + " | ".join(f"`{n}`" for n in names) + " |",
                  "|---|" + "---|" * len(names)]
        for r in ledger["stages"]:
            lines.append(f"| {r['stage']} | " + " | ".join(fmt_ap(r["st_ap_20_per_class"].get(n)) for n in names) + " |")
    eq = ledger.get("equalization")
    if eq:
        lines += ["", f"Equalized before int8 ({ledger['weights']} weights): the weights reading "
                  f"{eq['dead_channels']} always-zero channels zeroed, {eq['constant_channels']} constant channels moved into biases, "
                  f"{eq['scaled_channels']} channels rescaled over {eq['pairs']} layer pairs ({eq['held_channels']} "
                  f"left: they may reach ReLU6's clip); worst largest/median channel weight range "
                  f"{eq['worst_range_ratio_before']:.1f} -> {eq['worst_range_ratio_after']:.1f}; biases corrected "
                  f"on {eq['bias_correction_images']} calibration images for the int8 files only."]
    for r in ledger["stages"]:
        if r.get("confident_det_agreement") is not None:
            lines += ["", f"{r['stage']}: detections scoring > {CONFIDENT_SCORE} (what a deployment keeps) agree "
                      f"with {r['confident_agreement_vs']} on {100 * r['confident_det_agreement']:.2f} %."]
        if r.get("kernel_floor_det_agreement") is not None:
            tflm = r.get("st_ap_20_tflm")
            lines += ["", f"TFLite's own noise floor: the {r['stage']} file under XNNPACK vs LiteRT's builtin kernels "
                      f"agrees on {100 * r['kernel_floor_det_agreement']:.2f} % of boxes (max Δ scores "
                      f"{r['kernel_floor_max_diff_scores']:.2e}, offsets {r['kernel_floor_max_diff_offsets']:.2e}); "
                      f"ST-AP with the builtin kernels: {r['st_ap_20_reference_kernels']:.2f}"
                      + (f"; under TensorFlow Lite Micro (the microcontroller runtime's arithmetic, equal to "
                         f"TFLite's reference kernels bit for bit): {tflm:.2f}." if tflm is not None else ".")]
    for r in ledger["stages"]:
        if "ops" in r:
            counts: dict[str, int] = {}
            for op in r["ops"]:
                counts[op] = counts.get(op, 0) + 1
            lines += ["", "int8 ops: " + ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items()))]
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in ledger["timings_s"].items())]
    return "\n".join(lines) + "\n"


def write_ledger(ledger: dict, out_dir: str | os.PathLike) -> tuple[Path, ...]:
    """``ledger.json`` and ``ledger.md`` in ``out_dir``, and ``ledger_layers.png`` when the ledger has
    the per-layer part (:mod:`.layer_ledger_report`), each written atomically."""
    out_dir = Path(out_dir)
    text = ledger_markdown(ledger)
    paths = [out_dir / "ledger.json", out_dir / "ledger.md"]
    if ledger.get("layers"):
        from .layer_ledger_report import layer_ledger_markdown, plot_layer_ledger

        text += "\n" + layer_ledger_markdown(ledger["layers"]).replace("# Per-layer", "## Per-layer", 1)
        paths.append(plot_layer_ledger(ledger["layers"], out_dir / "ledger_layers.png"))
    atomic_write_text(paths[0], json.dumps(ledger, indent=2) + "\n")
    atomic_write_text(paths[1], text)
    return tuple(paths)
