"""Scoring model files on datasets: ST-AP (2.0 / 2025 variants) and COCO metrics, and paired comparisons.

:func:`evaluate` runs any runner (:func:`ssd_mnv1.runners.open_runner`: ``.ckpt``, ``.h5``,
``.onnx``, ``.tflite``) over a dataset (:func:`ssd_mnv1.data.open_dataset`) and scores it; images
are stretched to SxS with ST's nearest resize, decoded in parallel worker processes
(:func:`resize_all` decodes once for several models). ``python -m ssd_mnv1.evaluate`` is this
loop; :func:`paired_st_ap` scores several model files on the same images with paired bootstrap
intervals (:mod:`ssd_mnv1.metrics.bootstrap`; ``bench/paired_ap.py`` prints it).

Classes: a runner that names its classes (a checkpoint) is scored with them, else the dataset's,
else ``person`` / ``class1..classC`` from the score columns; the score columns must be 1 + their
count. :meth:`EvaluationResult.to_json` gives, in percent, with only the keys of the metrics asked
for::

    {"images": N, "st_ap_20": x, "st_ap_25": y,
     "coco": {"AP": .., "AP50": .., "AP75": .., "APs": .., "APm": .., "APl": ..},
     "per_class": {NAME: {"st_ap_20": x, "st_ap_25": y, "coco": {"AP": .., ...}}, ...}}

``per_class`` has one entry per class in label order, with the same keys as the top level;
the top-level ST-AP is the mean over the classes that have ground truth (ST's mAP), while the
top-level COCO numbers average over categories inside pycocotools. A per-class value is ``null``
where there is nothing to average (a class without ground truth in the evaluated images, also
warned; a COCO size range without boxes), at the top level too.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .cpus import available_cpus, plan_cpus
from .fileio import existing_file
from .hub import resolve_model_file
from .metrics.bootstrap import BOOTSTRAP_SAMPLES, Interval, bootstrap_comparison
from .preprocess import DECODERS, load_image, resize
from .progress import progress as progress_bar

#: ``--metric`` choices: one ST-AP variant, COCO, or all three.
METRICS = ("st20", "st25", "coco", "all")
#: ``--postprocess`` choices: each metric's own recipe (ST's evaluators: ``st20``, ``st25``); the
#: firmware's ``deploy`` recipe in Python (:func:`ssd_mnv1.postprocess.postprocess`); the same recipe
#: by the C bundle's post-processor (:func:`ssd_mnv1.postprocess_c.postprocess_c`).
POSTPROCESSING = ("metric", "python", "c")


class ResizedImages(Dataset):
    """Dataset view yielding ``(resized HWC image, index)``; decoding runs in DataLoader workers."""

    def __init__(self, dataset, size: int, interpolation: str = "nearest", decoder: str = "pil"):
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
        self.dataset, self.size, self.interpolation, self.decoder = dataset, size, interpolation, decoder

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        if self.decoder == "tf":
            rec = self.dataset.records[i]
            image = load_image(rec.file, decoder="tf")
            if image.shape[:2] != (rec.height, rec.width):
                raise ValueError(f"{rec.file}: TensorFlow decodes {image.shape[1]}x{image.shape[0]} but the "
                                 f"annotations say {rec.width}x{rec.height}")
        else:
            image, _ = self.dataset[i]
        return resize(image, self.size, self.interpolation), i


def _collate(batch):
    return np.stack([b[0] for b in batch]), [b[1] for b in batch]


@dataclass
class EvaluationResult:
    """Metrics in percent, with the evaluator objects for PR curves.

    ``per_class``: class name -> that class's metrics under the JSON keys (``st_ap_20``,
    ``st_ap_25``, ``coco``), ``None`` where the class has nothing to score (see the module doc).
    """

    images: int
    model: str
    input_size: int
    st_ap: dict[str, float] = field(default_factory=dict)
    coco: dict[str, float] | None = None
    st_results: dict = field(default_factory=dict)
    class_names: tuple[str, ...] = ()
    per_class: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        out: dict = {"images": self.images}
        for variant, value in self.st_ap.items():
            out[f"st_ap_{variant[2:]}"] = value
        if self.coco is not None:  # NaN (nothing to average) is not JSON: null, as per class
            out["coco"] = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in self.coco.items()}
        if self.per_class:
            out["per_class"] = self.per_class
        return out


def resize_all(dataset, size: int, interpolation: str = "nearest", *, workers: int | None = None,
               batch_size: int = 32, progress: bool = True, limit: int | None = None,
               decoder: str = "pil") -> np.ndarray:
    """Decode and resize a dataset once (N, S, S, 3), to run several models on the same pixels.

    ``limit``: only the first N images (pass the same ``limit`` to :func:`evaluate`). ``workers``:
    decoding processes, by default one per available CPU (up to 4): there is nothing else to run.
    """
    view = ResizedImages(dataset, size, interpolation, decoder)
    if limit is not None and limit < len(view):
        view = torch.utils.data.Subset(view, range(max(0, limit)))
    loader = _loader(view, batch_size, min(4, available_cpus()) if workers is None else workers, decoder)
    batches = [b for b, _ in progress_bar(loader, desc=f"decode+resize @{size}", unit="batch", disable=not progress)]
    return np.concatenate(batches) if batches else np.zeros((0, size, size, 3), np.uint8)


def _loader(view, batch_size: int, workers: int | None, decoder: str = "pil") -> DataLoader:
    workers = plan_cpus(purpose="evaluate").workers if workers is None else workers
    if decoder == "tf":  # TensorFlow is not fork-safe once initialised; its decoder is fast anyway
        workers = 0
    return DataLoader(view, batch_size=batch_size, num_workers=workers, collate_fn=_collate)


def evaluate(runner, dataset, metrics: tuple[str, ...] = ("st20",), *, batch_size: int = 16,
             workers: int | None = None, interpolation: str = "nearest", progress: bool = True,
             limit: int | None = None, images: np.ndarray | None = None,
             decoder: str = "pil", st25_nms: str = "torch",
             class_names: Sequence[str] | None = None, postprocessing: str = "metric") -> EvaluationResult:
    """Run ``runner`` over ``dataset`` and compute the requested metrics.

    ``images``: the first ``len(images)`` images of the dataset already resized by
    :func:`resize_all` (skips decoding); only those are evaluated. ``decoder``: see
    :data:`DECODERS`. ``st25_nms``: NMS back-end of the st25 and COCO post-processing
    (``postprocess.NMS_BACKENDS``; ``tf`` is ST 2025's own op and breaks score ties as ST does).
    ``workers``: decoding processes (default: ``plan_cpus(purpose="evaluate")``); the compute threads
    are the caller's (``torch.set_num_threads``, the runner's own). ``class_names``: label 1, 2, ...
    (default: the runner's, else the dataset's; with neither, ``person`` or ``class1..classC`` from
    the score columns); the model's score columns must be 1 + their count. ``postprocessing``
    (:data:`POSTPROCESSING`): ``metric`` scores each metric's own recipe; ``python`` / ``c`` score the
    firmware's deploy detections (score > 0.5, top 100), in Python or by the C bundle's code, with
    every metric.

    Three stages overlap: decoding (worker processes), the runner (this thread) and post-processing
    + metric updates of the previous batch (one helper thread; NMS and the torch forward release
    the GIL). Batches are post-processed in order, so the results are those of a serial loop.
    """
    from .metrics import STAPEvaluator
    from .metrics.coco import coco_metrics_by_class
    from .postprocess import postprocess

    if postprocessing not in POSTPROCESSING:
        raise ValueError(f"unknown post-processing {postprocessing!r}; allowed values: {', '.join(POSTPROCESSING)}")
    deploy = None
    if postprocessing == "python":
        deploy = postprocess
    elif postprocessing == "c":
        from .postprocess_c import load_library, postprocess_c

        load_library()  # compiled now: no compiler fails before the model runs
        deploy = postprocess_c
    names = _class_names(runner, dataset, class_names)
    variants = [m for m in metrics if m in ("st20", "st25")]
    want_coco = "coco" in metrics
    size = runner.input_size
    evaluators = {v: STAPEvaluator(size, v, sync_on_compute=False) for v in variants}
    coco_dets: dict[int, tuple] = {}
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if images is not None:
        if images.shape[1] != size:
            raise ValueError(f"pre-resized images are {images.shape[1]}px, the model needs {size}px")
        if len(images) > len(dataset):
            raise ValueError(f"{len(images)} pre-resized images for a dataset of {len(dataset)}")
        n = min(n, len(images))
        loader = [(images[i:min(i + batch_size, n)], list(range(i, min(i + batch_size, n))))
                  for i in range(0, n, batch_size)]
    else:
        view = ResizedImages(dataset, size, interpolation, decoder)
        loader = _loader(torch.utils.data.Subset(view, range(n)) if n < len(view) else view, batch_size,
                         workers, decoder)
    records = dataset.records
    seen = []

    def score(outputs, indices: list[int]) -> None:
        """Post-processing and metric updates of one batch (the helper thread)."""
        scores, offsets, anchors = outputs
        if deploy is not None:  # the firmware's detections, scored by every metric
            dets = dict.fromkeys(variants + ["st25"], deploy(scores, offsets, anchors))
        else:
            dets = {v: postprocess(scores, offsets, anchors, variant=v, nms=st25_nms if v == "st25" else "torch")
                    for v in variants}
        for variant in variants:  # dataset indices as ids: score ties go in dataset order
            evaluators[variant].update(dets[variant], [records[i].boxes for i in indices],
                                       [records[i].labels for i in indices], indices)
        if want_coco:  # COCO gets the 2025 post-processing (clip, NMS, top 100), as st25 uses
            coco_in = dets["st25"] if "st25" in dets else \
                postprocess(scores, offsets, anchors, variant="st25", nms=st25_nms)
            for i, det in zip(indices, coco_in):
                coco_dets[records[i].image_id] = det
        seen.extend(indices)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate-postprocess") as helper:
        pending = None
        for batch, indices in progress_bar(loader, desc=f"evaluate {runner.name} @{size}", unit="batch",
                                   disable=not progress):
            outputs = runner(batch)
            names = _check_columns(outputs[0], names, runner.name)
            if pending is not None:
                pending.result()  # one batch in flight at most; re-raises its error here
            pending = helper.submit(score, outputs, indices)
        if pending is not None:
            pending.result()
    names = names if names is not None else ("person",)  # nothing was evaluated
    result = EvaluationResult(images=len(seen), model=runner.name, input_size=size, class_names=names)
    by_label: dict[int, dict] = {label: {} for label in range(1, len(names) + 1)}
    for variant, ev in evaluators.items():
        res = ev.compute()
        result.st_results[variant] = res
        result.st_ap[variant] = round(100.0 * res.ap, 4)
        for label in sorted(set(by_label) | set(res.per_class)):
            by_label.setdefault(label, {})[f"st_ap_{variant[2:]}"] = _percent(res.per_class.get(label))
    if want_coco:
        coco, coco_by_label = coco_metrics_by_class([records[i] for i in seen], coco_dets)
        result.coco = {k: round(100.0 * v, 4) for k, v in coco.items()}
        for label in sorted(set(by_label) | set(coco_by_label)):
            values = coco_by_label.get(label)
            by_label.setdefault(label, {})["coco"] = None if values is None else \
                {k: _percent(v) for k, v in values.items()}
    result.per_class = {names[label - 1] if label <= len(names) else str(label): values
                        for label, values in sorted(by_label.items())}
    empty = [name for name, values in result.per_class.items() if values and
             all(v is None for v in values.values())]
    if empty:
        warnings.warn(f"class(es) {', '.join(empty)} have no ground truth in the {result.images} evaluated "
                      "image(s): their AP is null and left out of the mean", stacklevel=2)
    return result


def _class_names(runner, dataset, class_names: Sequence[str] | None) -> tuple[str, ...] | None:
    """The names of labels 1, 2, ...: given, else the runner's (a checkpoint's), else the dataset's;
    ``None`` when nothing names them (plain record lists): the score columns then decide."""
    for names in (class_names, getattr(runner, "class_names", None), getattr(dataset, "class_names", None)):
        if names is not None:
            return tuple(str(n) for n in names)
    return None


def _check_columns(scores: np.ndarray, names: tuple[str, ...] | None, model: str) -> tuple[str, ...]:
    """The class names, checked against the score columns: a model scoring other classes than
    those named would give every AP to the wrong class. Unnamed classes get the default names."""
    columns = scores.shape[-1]
    if names is None:
        from .model import resolve_class_names

        return resolve_class_names(num_classes=columns - 1)
    if columns != 1 + len(names):
        raise ValueError(f"{model} has {columns} score columns (background + {columns - 1} classes) but is "
                         f"evaluated with {len(names)} class name(s) {list(names)}")
    return names


def _percent(value: float | None) -> float | None:
    """0..1 -> percent (4 decimals); ``None`` for nothing to average (NaN from COCOeval, a class without GT)."""
    return None if value is None or math.isnan(value) else round(100.0 * value, 4)


def format_result(result: EvaluationResult) -> str:
    lines = [f"{result.model} @ {result.input_size}x{result.input_size} on {result.images} images"]
    names = {"st20": "ST-AP (2.0, IoU 0.4, no cap)", "st25": "ST-AP (2025, IoU 0.4, cap 100)"}
    for variant, value in result.st_ap.items():
        lines.append(f"  {names[variant]:<34} {value:7.2f}")
    if result.coco is not None:
        lines.append("  COCO  " + "  ".join(f"{k} {v:.2f}" for k, v in result.coco.items()))
    if len(result.per_class) > 1:  # one class: the lines above are its numbers
        columns = [(f"st_ap_{v[2:]}", None, {"st20": "ST-AP 2.0", "st25": "ST-AP 2025"}[v]) for v in result.st_ap]
        if result.coco is not None:
            columns += [("coco", "AP", "COCO AP"), ("coco", "AP50", "AP50")]
        width = max(12, *(len(name) for name in result.per_class))
        lines.append(f"  {'class':<{width}}" + "".join(f"  {title:>10}" for _, _, title in columns))
        for name, values in result.per_class.items():
            cells = []
            for key, sub, _ in columns:
                value = values.get(key)
                value = value.get(sub) if sub is not None and value is not None else value
                cells.append(f"  {'-' if value is None else f'{value:.2f}':>10}")
            lines.append(f"  {name:<{width}}" + "".join(cells))
    return "\n".join(lines)


# ------------------------------------------------------------------ paired comparison of model files


def open_model_spec(spec: str, threads: int | None = None) -> tuple[str, object]:
    """(label, runner) of ``MODEL[@KERNELS]``: any model file ``evaluate`` takes; ``@KERNELS`` picks a
    runtime, for a .tflite ``xnnpack`` (default), ``builtin`` or ``reference`` (= TensorFlow Lite
    Micro, ``--mcu`` files), for a QDQ .onnx ``int8`` (default, onnxruntime's integer kernels) or
    ``float`` (the ONNX spec's float definition). The label is the file name, with the kernels for a
    .tflite or .onnx."""
    from .runners import EVAL_TORCH_OPTIONS, QDQ_ARITHMETIC, TFLITE_KERNELS, open_runner

    threads = torch.get_num_threads() if threads is None else threads
    path, _, kernels = spec.partition("@")
    path = str(existing_file(resolve_model_file(path), "model file"))  # a zoo name is fetched
    suffix = Path(path).suffix.lower()
    if suffix == ".tflite":
        kernels = kernels or "xnnpack"
        if kernels not in TFLITE_KERNELS:
            raise ValueError(f"{spec}: a .tflite runs with @{', @'.join(TFLITE_KERNELS)}, not @{kernels}")
        return f"{Path(path).name}@{kernels}", open_runner(path, num_threads=threads, tflite_kernels=kernels)
    if suffix == ".onnx":
        kernels = kernels or "int8"
        if kernels not in QDQ_ARITHMETIC:
            raise ValueError(f"{spec}: an .onnx runs with @{', @'.join(QDQ_ARITHMETIC)}, not @{kernels}")
        return f"{Path(path).name}@{kernels}", open_runner(path, num_threads=threads, qdq_arithmetic=kernels)
    if kernels:
        raise ValueError(f"{spec}: @{kernels} applies to .tflite and .onnx files only")
    return Path(path).name, open_runner(path, num_threads=threads, **EVAL_TORCH_OPTIONS)


def paired_st_ap(models: Sequence[str], data: str | os.PathLike, *, limit: int | None = None,
                 samples: int | None = None, seed: int = 0, confidence: float = 0.95, threads: int | None = None,
                 log: Callable[[str], object] = print) -> dict:
    """Each model's ST-AP 2.0 (percent) and every pairwise difference on ``data``, with paired
    bootstrap intervals (:func:`bootstrap_comparison`, ``samples`` resamples, default
    :data:`BOOTSTRAP_SAMPLES`).

    ``models`` are :func:`open_model_spec` specs, at least two, all of one input size; the same file
    may appear with several runtimes. Every model scores the same decoded images (the first
    ``limit``), so a resample of the images is shared by all: an interval of a difference that
    excludes 0 means the dataset resolves it. ``log`` gets each model's ST-AP as it is measured.
    Returns the JSON report: ``models`` (label, value, low, high) and ``differences`` (model minus an
    earlier one, with ``resolved``: the interval excludes 0); :func:`paired_st_ap_table` renders it.
    """
    from .data import open_dataset

    if len(models) < 2:
        raise ValueError("give at least two models to compare")
    runners = [open_model_spec(spec, threads) for spec in models]
    names = [label for label, _ in runners]
    for k, (spec, (label, runner)) in enumerate(zip(models, runners)):
        if names.count(label) > 1 and list(models).count(spec) == 1:  # one name, two runs' exports
            runners[k] = (str(Path(spec.partition("@")[0]).parent / label), runner)
    sizes = {runner.input_size for _, runner in runners}
    if len(sizes) != 1:
        raise ValueError(f"the models take different input sizes {sorted(sizes)}; compare one size at a time")
    dataset = open_dataset(data)
    images = resize_all(dataset, sizes.pop(), progress=False, limit=limit)
    results = []
    for label, runner in runners:
        result = evaluate(runner, dataset, ("st20",), images=images, limit=len(images), progress=False)
        results.append((label, result.st_results["st20"]))
        log(f"  {label}: ST-AP {result.st_ap['st20']:.2f}")

    samples = samples or BOOTSTRAP_SAMPLES
    labels = [label for label, _ in results]
    cmp = bootstrap_comparison([r for _, r in results], samples, seed, confidence)
    pairs = []
    for i, j in itertools.combinations(range(len(labels)), 2):
        diff = cmp.difference(j, i)
        resolved = diff.low > 0 or diff.high < 0
        pairs.append({"model": labels[j], "minus": labels[i], **diff.__dict__, "resolved": resolved})
    rows = [{"model": label, **cmp.interval(i).__dict__} for i, label in enumerate(labels)]
    return {"data": str(data), "images": len(images), "samples": samples, "confidence": confidence,
            "seed": seed, "models": rows, "differences": pairs}


def paired_st_ap_table(report: dict) -> list[str]:
    """Readable lines of a :func:`paired_st_ap` report: each model's ST-AP, then every difference."""
    level = f"{report['confidence']:.0%}"
    labels = [row["model"] for row in report["models"]]
    width = max(len(label) for label in labels)
    lines = ["", f"ST-AP 2.0 on {report['data']}: {report['images']} images; {level} intervals from "
             f"{report['samples']} resamples of the images, shared by all models (paired)",
             f"{'model':<{width}}  {'ST-AP [' + level + ']':>24}"]
    for row in report["models"]:
        lines.append(f"{row['model']:<{width}}  {row['value']:6.2f} [{row['low']:6.2f}, {row['high']:6.2f}]")
    lines += ["", f"{'difference (row minus column)':<{2 * width + 3}}  {'Δ ST-AP [' + level + ']':>24}  resolved"]
    for pair in report["differences"]:
        diff = Interval(pair["value"], pair["low"], pair["high"])
        lines.append(f"{pair['model']:<{width}} - {pair['minus']:<{width}}  {str(diff):>24}  "
                     f"{'yes' if pair['resolved'] else 'no'}")
    return lines
