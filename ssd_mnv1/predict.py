"""Detect objects (persons, for ST's model) in images with any model file and draw the results.

    python -m ssd_mnv1.predict MODEL IMAGES... --out DIR [--score 0.5] [--iou 0.5] [--max-det 100]
                               [--classes NAME ...] [--runtime litert|tflm]

MODEL is a ``.ckpt``, ``.h5``, ``.onnx`` or ``.tflite`` (as for ``ssd_mnv1.evaluate``); IMAGES are
files or folders. ``--runtime tflm`` runs a ``.tflite`` in TensorFlow Lite Micro (the ``mcu``
extra; a file exported with ``--mcu``) instead of LiteRT. Boxes are named with the checkpoint's
stored classes; an ``.onnx`` / ``.tflite`` stores none, so ``--classes`` names them (default
``person`` for a one-class file). For each image DIR gets ``<name>.png`` with boxes, names and
scores drawn, and ``detections.json`` lists the classes and every detection (``class_id``,
``label`` = its name, score, box in original-image pixels), and which runner made them. The
library is :mod:`ssd_mnv1.prediction`.
"""

from __future__ import annotations

import argparse
import json

from .cli import run
from .fileio import atomic_path, atomic_write_text, output_folder
from .prediction import annotate, expand_images
from .runners import INT8_INPUT_MODES, RUNTIMES, model_class_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_mnv1.predict", description=__doc__.split("\n")[0])
    parser.add_argument("model", help=".ckpt, .h5, .onnx or .tflite")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--score", type=float, default=0.5, help="score threshold (default 0.5)")
    parser.add_argument("--iou", type=float, default=0.5, help="NMS IoU threshold (default 0.5)")
    parser.add_argument("--max-det", type=int, default=100, help="detections kept per image (default 100)")
    parser.add_argument("--classes", nargs="+", metavar="NAME",
                        help="class names in label order (default: the checkpoint's own; person for a one-class "
                             ".onnx/.tflite, which store no names); a checkpoint's names must equal these")
    parser.add_argument("--int8-input", default="raw", choices=INT8_INPUT_MODES,
                        help="uint8 TFLite input: raw pixels (device), ST 2.0 or ST 2025 host conversion")
    parser.add_argument("--runtime", default="litert", choices=RUNTIMES,
                        help=".tflite runtime: litert (default) or tflm (TensorFlow Lite Micro, the microcontroller "
                             "runtime; needs the mcu extra and a file exported with --mcu)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.score < 1.0:
        raise ValueError(f"--score must be in [0, 1), got {args.score}")

    from .runners import open_runner

    out = output_folder(args.out, "--out")
    images = expand_images(args.images)
    if args.runtime == "tflm":
        from .runners import open_tflm_runner

        runner = open_tflm_runner(args.model, int8_input=args.int8_input)
    else:
        runner = open_runner(args.model, int8_input=args.int8_input)
    names = list(model_class_names(runner, args.classes, args.model))
    report = []
    for path in images:
        drawn, entry = annotate(runner, path, names, score=args.score, iou=args.iou, max_det=args.max_det)
        with atomic_path(out / f"{path.stem}.png") as tmp:
            drawn.save(tmp, format="PNG")
        report.append(entry)
        print(f"{path}: {len(entry['detections'])} detection(s) -> {out / (path.stem + '.png')}")
    atomic_write_text(out / "detections.json", json.dumps({"model": str(args.model), "runner": runner.name,
                                                          "classes": names, "score_threshold": args.score,
                                                          "images": report}, indent=2) + "\n")
    print(f"wrote {out / 'detections.json'}")
    return 0


if __name__ == "__main__":
    run(main)
