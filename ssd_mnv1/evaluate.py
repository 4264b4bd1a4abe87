"""Evaluate any model file on a dataset with ST's AP (2.0 / 2025 variants) and COCO metrics.

    python -m ssd_mnv1.evaluate MODEL --data DIR [--metric st20|st25|coco|all] [--size S] [--classes NAME ...]
                                [--int8-input raw|st|st25] [--decoder pil|tf] [--st25-nms torch|tf]
                                [--tflite-kernels xnnpack|builtin|reference] [--runtime litert|tflm]
                                [--postprocess metric|python|c] [--threads N] [--json FILE] [--pr-curve FILE.png]

MODEL is a ``.ckpt``, an ST/Keras ``.h5`` (through our importer, run in PyTorch), an ``.onnx`` or a
``.tflite``; DIR is a COCO json + images folder or ST's YOLO layout, detected automatically.
Images are stretched to SxS with ST's nearest resize (decoded in parallel worker processes); the
library is :mod:`ssd_mnv1.evaluation`.

Classes: a checkpoint (or an ``.h5`` run in PyTorch) names its own; an ``.onnx`` / ``.tflite`` file
does not, so ``--classes`` names them in label order (default ``person`` for ST's one-class layout; a
file with more score columns needs ``--classes``). The dataset is read with those names (COCO
categories by name, YOLO class ids 0..C-1 in that order); a name the dataset lacks is an error.

``--postprocess``: ``metric`` (default) gives each metric ST's evaluation recipe; ``python`` scores
the firmware's detections (the deploy recipe: score > 0.5, per-class NMS, top 100) and ``c`` the
same computed by the C bundle's post-processor (compiled with the system ``cc`` once): with
``--runtime tflm``, the device's whole path.

``--json FILE`` writes the metrics in percent, with only the keys of the metrics asked for
(``--metric all`` gives all), one entry per class under ``per_class``: the format is
:meth:`ssd_mnv1.evaluation.EvaluationResult.to_json`'s (:mod:`ssd_mnv1.evaluation` states it).
"""

from __future__ import annotations

import argparse
import gc
import json

import torch

from .cli import run
from .cpus import plan_cpus
from .evaluation import METRICS, POSTPROCESSING, evaluate, format_result
from .fileio import atomic_write_text, output_file
from .preprocess import DECODERS, INTERPOLATIONS
from .runners import EVAL_TORCH_OPTIONS, INT8_INPUT_MODES, TFLITE_KERNELS, model_class_names


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
    parser.add_argument("--postprocess", default="metric", choices=POSTPROCESSING,
                        help="metric (default): each metric's own recipe (ST's evaluators); python: the firmware's "
                             "deploy recipe (score > 0.5, top 100); c: that recipe by the C bundle's code "
                             "(compiled with cc)")
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

    for option, path in (("--json", args.json), ("--pr-curve", args.pr_curve)):
        if path:
            output_file(path, option)  # before the models run: a bad path fails now, not after the metrics
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
                      st25_nms=args.st25_nms, class_names=names, postprocessing=args.postprocess)
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
