"""Detect objects (persons, for ST's model) in images with any model file and draw the results.

    python -m ssd_mnv1.predict MODEL IMAGES... --out DIR [--score 0.5] [--iou 0.5] [--max-det 100]
                               [--classes NAME ...] [--runtime litert|tflm]

MODEL is a ``.ckpt``, ``.h5``, ``.onnx`` or ``.tflite`` (as for ``ssd_mnv1.evaluate``); IMAGES are
files or folders. ``--runtime tflm`` runs a ``.tflite`` in TensorFlow Lite Micro (the ``mcu``
extra; a file exported with ``--mcu``) instead of LiteRT. Boxes are named with the checkpoint's
stored classes; an ``.onnx`` / ``.tflite`` stores none, so ``--classes`` names them (default
``person`` for a one-class file). For each image DIR gets ``<name>.png`` with boxes, names and
scores drawn, and ``detections.json`` lists the classes and every detection (``class_id``,
``label`` = its name, score, box in original-image pixels), and which runner made them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .cli import run
from .fileio import atomic_path, atomic_write_text
from .postprocess import Detections, postprocess
from .preprocess import IMAGE_SUFFIXES, is_image_file, load_image, resize
from .runners import INT8_INPUT_MODES, model_class_names
from .tflm import RUNTIMES

COLOURS = ((255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255))


def expand_images(paths: list[str]) -> list[Path]:
    """Files as given, folders expanded (sorted) to the images they contain."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if is_image_file(f))
            if not found:
                raise ValueError(f"{p}: folder contains no images ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image file or folder")
    return out


def draw(image: np.ndarray, boxes_px: np.ndarray, scores: np.ndarray, labels: np.ndarray,
         class_names: list[str]) -> Image.Image:
    """The image with one rectangle and a "name score" tag per detection."""
    im = Image.fromarray(image)
    canvas = ImageDraw.Draw(im)
    width = max(2, round(min(im.size) / 200))
    for (ax, ay, bx, by), score, label in zip(boxes_px.tolist(), scores.tolist(), labels.tolist()):
        # Corner coding can decode x2 < x1 (an untrained model does): draw the box it spans.
        x1, y1, x2, y2 = min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)
        colour = COLOURS[(label - 1) % len(COLOURS)]
        canvas.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        name = class_names[label - 1] if 0 < label <= len(class_names) else str(label)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = canvas.textbbox((x1, y1), text)
        ty = y1 - (bottom - top) - 2 * width if y1 - (bottom - top) - 2 * width > 0 else y1
        canvas.rectangle((x1, ty, x1 + (right - left) + 2 * width, ty + (bottom - top) + 2 * width), fill=colour)
        canvas.text((x1 + width, ty + width - (top - y1)), text, fill=(255, 255, 255))
    return im


def predict_image(runner, path: Path, *, score: float, iou: float, max_det: int) -> tuple[np.ndarray, Detections]:
    image = load_image(path)
    outputs = runner(resize(image, runner.input_size)[None])
    det = postprocess(*outputs, variant="deploy", score_threshold=score, iou_threshold=iou,
                      max_detections=max_det)[0]
    return image, det


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

    images = expand_images(args.images)
    if args.runtime == "tflm":
        from .tflm import open_tflm_runner

        runner = open_tflm_runner(args.model, int8_input=args.int8_input)
    else:
        runner = open_runner(args.model, int8_input=args.int8_input)
    names = list(model_class_names(runner, args.classes, args.model))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = []
    for path in images:
        image, det = predict_image(runner, path, score=args.score, iou=args.iou, max_det=args.max_det)
        h, w = image.shape[:2]
        boxes_px = det.to_pixels(w, h).numpy()
        drawn = draw(image, boxes_px, det.scores.numpy(), det.labels.numpy(), names)
        with atomic_path(out / f"{path.stem}.png") as tmp:
            drawn.save(tmp, format="PNG")
        report.append({
            "image": str(path), "width": w, "height": h,
            "detections": [{"class_id": int(c), "label": names[int(c) - 1],
                            "score": round(float(s), 5), "box": [round(float(v), 2) for v in b]}
                           for b, s, c in zip(boxes_px, det.scores, det.labels)],
        })
        print(f"{path}: {len(det)} detection(s) -> {out / (path.stem + '.png')}")
    atomic_write_text(out / "detections.json", json.dumps({"model": str(args.model), "runner": runner.name,
                                                          "classes": names, "score_threshold": args.score,
                                                          "images": report}, indent=2) + "\n")
    print(f"wrote {out / 'detections.json'}")
    return 0


if __name__ == "__main__":
    run(main)
