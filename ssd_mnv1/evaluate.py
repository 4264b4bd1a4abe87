"""Evaluate any model file on a dataset with ST's AP (2.0 / 2025 variants) and COCO metrics.

    python -m ssd_mnv1.evaluate MODEL --data DIR [--metric st20|st25|coco|all] [--size S] [--classes NAME ...]
                                [--int8-input raw|st|st25] [--decoder pil|tf] [--st25-nms torch|tf]
                                [--tflite-kernels xnnpack|builtin|reference] [--runtime litert|tflm]
                                [--threads N] [--json FILE] [--pr-curve FILE.png]

MODEL is a ``.ckpt``, an ST/Keras ``.h5`` (through our importer, run in PyTorch), an ``.onnx`` or a
``.tflite``; DIR is a COCO json + images folder or ST's YOLO layout, detected automatically.
Images are stretched to SxS with ST's nearest resize (decoded in parallel worker processes).

Classes: a checkpoint (or an ``.h5`` run in PyTorch) names its own; an ``.onnx`` / ``.tflite`` file
does not, so ``--classes`` names them in label order (default ``person`` for ST's one-class layout; a
file with more score columns needs ``--classes``). The dataset is read with those names (COCO
categories by name, YOLO class ids 0..C-1 in that order); a name the dataset lacks is an error.

``--json FILE`` writes, in percent, with only the keys of the metrics asked for (``--metric all``
gives all)::

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

import argparse
import gc
import json
import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from .progress import progress as progress_bar

from .cli import run
from .cpus import available_cpus, plan_cpus
from .fileio import atomic_write_text
from .preprocess import DECODERS, INTERPOLATIONS, load_image, resize
from .runners import EVAL_TORCH_OPTIONS, INT8_INPUT_MODES, TFLITE_KERNELS, model_class_names

METRICS = ("st20", "st25", "coco", "all")


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
             class_names: Sequence[str] | None = None) -> EvaluationResult:
    """Run ``runner`` over ``dataset`` and compute the requested metrics.

    ``images``: the first ``len(images)`` images of the dataset already resized by
    :func:`resize_all` (skips decoding); only those are evaluated. ``decoder``: see
    :data:`DECODERS`. ``st25_nms``: NMS back-end of the st25 and COCO post-processing
    (``postprocess.NMS_BACKENDS``; ``tf`` is ST 2025's own op and breaks score ties as ST does).
    ``workers``: decoding processes (default: ``plan_cpus(purpose="evaluate")``); the compute threads
    are the caller's (``torch.set_num_threads``, the runner's own). ``class_names``: label 1, 2, ...
    (default: the runner's, else the dataset's; with neither, ``person`` or ``class1..classC`` from
    the score columns); the model's score columns must be 1 + their count.

    Three stages overlap: decoding (worker processes), the runner (this thread) and post-processing
    + metric updates of the previous batch (one helper thread; NMS and the torch forward release
    the GIL). Batches are post-processed in order, so the results are those of a serial loop.
    """
    from .metrics import STAPEvaluator
    from .metrics.coco import coco_metrics_by_class
    from .postprocess import postprocess

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_mnv1.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("model", help=".ckpt, .h5, .onnx or .tflite")
    parser.add_argument("--data", required=True, help="COCO json/folder or ST YOLO-layout folder")
    parser.add_argument("--metric", default="st20", choices=METRICS, help="default: st20 (ST's 2.0 evaluator)")
    parser.add_argument("--size", type=int, help="input size; must match the model's if given")
    parser.add_argument("--classes", nargs="+", metavar="NAME",
                        help="class names in label order, for .onnx/.tflite files (default: person for a "
                             "one-class file); a checkpoint stores its own, which these must equal")
    parser.add_argument("--int8-input", default="raw", choices=INT8_INPUT_MODES,
                        help="uint8 TFLite input: raw pixels (device), ST 2.0's (st) or 2025's (st25) "
                             "host conversion")
    parser.add_argument("--tflite-kernels", default="xnnpack", choices=TFLITE_KERNELS,
                        help="LiteRT kernels: xnnpack (CPU default), builtin (LiteRT's optimized kernels, no "
                             "delegate) or reference (TFLite's reference kernels: TensorFlow Lite Micro's "
                             "arithmetic bit for bit; ST's int8 files need builtin there, ours an --mcu export)")
    parser.add_argument("--runtime", default="litert", choices=("litert", "tflm"),
                        help=".tflite runtime: litert (default) or tflm (TensorFlow Lite Micro: the mcu extra "
                             "and a file exported with --mcu; one image at a time)")
    parser.add_argument("--interpolation", default="nearest", choices=INTERPOLATIONS)
    parser.add_argument("--decoder", default="pil", choices=DECODERS,
                        help="JPEG decoder: pil (default) or tf (ST's tf.io.decode_image, fast IDCT; "
                             "needs tensorflow) to reproduce ST's numbers")
    parser.add_argument("--st25-nms", default="torch", choices=("torch", "tf"),
                        help="NMS of st25/COCO: torch (default) or tf (ST 2025's own op, needs tensorflow; "
                             "breaks ties between equal int8 scores as ST does)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int,
                        help="decoding worker processes (default: half the available CPUs, 1 to 4)")
    parser.add_argument("--threads", type=int,
                        help="PyTorch / TFLite / onnxruntime compute threads (default: the available CPUs "
                             "less the workers, at least 1); 1 is much faster on a machine whose cores "
                             "are busy with other work")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--json", help="write the metrics as JSON (percentages)")
    parser.add_argument("--pr-curve", help="write a precision-recall PNG")
    args = parser.parse_args(argv)

    from .data import open_dataset
    from .runners import open_runner

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    threads = plan_cpus(args.workers, args.threads, purpose="evaluate").threads
    torch.set_num_threads(threads)
    runner = open_runner(args.model, int8_input=args.int8_input, num_threads=threads,
                         tflite_kernels=args.tflite_kernels, runtime=args.runtime, **EVAL_TORCH_OPTIONS)
    if args.size is not None and args.size != runner.input_size:
        raise ValueError(f"--size {args.size} does not match {args.model}, whose input is "
                         f"{runner.input_size}x{runner.input_size}")
    names = model_class_names(runner, args.classes, args.model)
    try:
        dataset = open_dataset(args.data, class_names=names)
    except ValueError as exc:  # a class the dataset lacks: say where the names came from
        if "unknown category name" not in str(exc):
            raise
        origin = (f"the classes stored in {args.model}" if getattr(runner, "class_names", None) is not None
                  else "--classes" if args.classes else f"the default class of {args.model}")
        raise ValueError(f"{exc} (evaluating {origin}: {', '.join(names)})") from None
    metrics = ("st20", "st25", "coco") if args.metric == "all" else (args.metric,)
    # The ~400k objects of the torch/TF imports and the model are never garbage; each full cyclic
    # collection would walk them again (~0.25 s, a few times per run): set them aside.
    gc.freeze()
    result = evaluate(runner, dataset, metrics, batch_size=args.batch_size, workers=args.workers,
                      interpolation=args.interpolation, limit=args.limit, decoder=args.decoder,
                      st25_nms=args.st25_nms, class_names=names)
    print(format_result(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.pr_curve:
        if not result.st_results:
            raise ValueError("--pr-curve needs an ST-AP metric (st20, st25 or all)")
        from .metrics import save_pr_curve

        save_pr_curve(result.st_results, args.pr_curve)
        print(f"wrote {args.pr_curve}")
    return 0


if __name__ == "__main__":
    run(main)
