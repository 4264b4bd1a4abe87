"""Detections on single images, drawn: the library of ``python -m ssd_mnv1.predict``.

:func:`expand_images` lists the images of files and folders, :func:`predict_image` runs a runner
(:func:`ssd_mnv1.runners.open_runner`) on one image with the deploy post-processing, :func:`draw`
puts one box and a "name score" tag per detection on it, and :func:`annotate` does all three and
gives the detections as ``detections.json`` lists them (box in original-image pixels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .postprocess import Detections, postprocess
from .preprocess import IMAGE_SUFFIXES, is_image_file, load_image, resize

#: Box colours, by label (cycled).
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


def annotate(runner, path: Path, class_names: list[str], *, score: float, iou: float,
             max_det: int) -> tuple[Image.Image, dict]:
    """``path`` with its detections drawn, and its entry of ``detections.json``: the image, its size
    and every detection's ``class_id``, ``label`` (its name), score and box in original pixels."""
    image, det = predict_image(runner, path, score=score, iou=iou, max_det=max_det)
    h, w = image.shape[:2]
    boxes_px = det.to_pixels(w, h).numpy()
    drawn = draw(image, boxes_px, det.scores.numpy(), det.labels.numpy(), class_names)
    entry = {
        "image": str(path), "width": w, "height": h,
        "detections": [{"class_id": int(c), "label": class_names[int(c) - 1],
                        "score": round(float(s), 5), "box": [round(float(v), 2) for v in b]}
                       for b, s, c in zip(boxes_px, det.scores, det.labels)],
    }
    return drawn, entry
