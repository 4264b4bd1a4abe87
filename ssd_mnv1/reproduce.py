"""ST's published AP next to what our evaluator measures for ST's own files and for our port.

    python -m ssd_mnv1.reproduce --reference-dir DIR --data DIR [--sizes 192 224 256] [--out FILE.md]
                                 [--json FILE.json] [--decoder tf|pil] [--st25-nms tf|torch]
                                 [--threads N] [--limit N] [--no-keras]

DIR (reference) holds ST's files as ST's model zoo lays them out (names and published figures:
``ssd_mnv1.zoo``). Nothing is downloaded.
Each image is decoded and resized once per size, and every model runs on exactly those pixels. The
default decoder is ST's own (``tf.io.decode_image``, whose fast IDCT differs from PIL's by a few
levels on most pixels), and the 2025 variant and COCO use ST's own NMS op (TF's
``combined_non_max_suppression``, whose order among equal int8 scores differs from torchvision's), so
that ST's files run here give what ST's evaluation code would.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import run
from .fileio import atomic_write_text
from .zoo import CARDS, st_files, st_release

#: (key, label) of every measured model, in table order.
MODELS = (
    ("int8_raw", "ST int8 .tflite, raw uint8 pixels (device)"),
    ("int8_st", "ST int8 .tflite, ST 2.0 host input conversion"),
    ("int8_st25", "ST int8 .tflite, ST 2025 host input conversion"),
    ("keras", "ST float .h5, Keras (tf_keras)"),
    ("port", "ST float .h5, our PyTorch port"),
)
#: The measured columns of the side-by-side tables (column head, key); the 2025 input conversion
#: is only in the full list.
SIDE_BY_SIDE = (("ST int8 .tflite, raw px", "int8_raw"), ("ST int8 .tflite, ST input", "int8_st"),
                ("ST .h5, Keras", "keras"), ("our port of the .h5", "port"))


def _keras_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tf_keras") is not None


def measure(reference_dir: Path, data: str, sizes: list[int], metrics=("st20", "st25", "coco"),
            limit: int | None = None, keras: bool = True, progress: bool = True,
            decoder: str = "tf", st25_nms: str = "tf", threads: int | None = None) -> list[dict]:
    """One row per (size, model): ST-AP 2.0 / 2025 and COCO AP / AP50 in percent."""
    from .data import open_dataset
    from .evaluate import evaluate, resize_all
    from .runners import KerasRunner, TFLiteRunner, TorchRunner
    from .weights import load_keras_h5

    dataset = open_dataset(data)
    rows = []
    for size in sizes:
        files = st_files(reference_dir, size, must_exist=True)
        images = resize_all(dataset, size, limit=limit, progress=progress, decoder=decoder)
        runners = {}
        if keras and _keras_available():
            runners["keras"] = lambda: KerasRunner(files.h5)
        runners["port"] = lambda: TorchRunner(load_keras_h5(files.h5))
        for mode in ("raw", "st", "st25"):
            runners[f"int8_{mode}"] = lambda mode=mode: TFLiteRunner(files.int8_tflite, mode,
                                                                     num_threads=threads)
        for key, label in MODELS:
            if key not in runners:
                continue
            res = evaluate(runners[key](), dataset, metrics, images=images, progress=progress,
                           st25_nms=st25_nms)
            rows.append({"size": size, "key": key, "model": label, "images": res.images,
                         "decoder": decoder, "st25_nms": st25_nms,
                         "st_ap_20": res.st_ap.get("st20"), "st_ap_25": res.st_ap.get("st25"),
                         "coco_ap": (res.coco or {}).get("AP"), "coco_ap50": (res.coco or {}).get("AP50")})
    return rows


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def _side_by_side(rows: list[dict], sizes: list[int], metric: str) -> list[str]:
    by = {(r["size"], r["key"]): r for r in rows}
    head = ["S"] + [f"published: {card.column}" for card in CARDS] + \
        [f"measured: {col}" for col, _ in SIDE_BY_SIDE] + ["port − Keras"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for s in sizes:
        measured = [by.get((s, k), {}).get(metric) for _, k in SIDE_BY_SIDE]
        keras, port = by.get((s, "keras"), {}).get(metric), by.get((s, "port"), {}).get(metric)
        delta = f"{port - keras:+.2f}" if keras is not None and port is not None else "–"
        published = [st_release(s).published_ap[card.key] for card in CARDS]
        cells = [str(s)] + [_fmt(v) for v in published + measured] + [delta]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(rows: list[dict], sizes: list[int], data: str) -> str:
    """Per resolution, ST's published AP next to our measurements; then every measured number."""
    n = rows[0]["images"] if rows else 0
    decoder = rows[0].get("decoder", "?") if rows else "?"
    nms = rows[0].get("st25_nms", "?") if rows else "?"
    decoders = {"tf": "TensorFlow's `tf.io.decode_image` (as ST's evaluation code)", "pil": "PIL"}
    nms_names = {"tf": "TF's `combined_non_max_suppression` (as ST's 2025 code)", "torch": "torchvision"}
    lines = ["## ST-AP (%) per resolution: ST's published figures next to our measurements", "",
             "* **published**: ST's model cards, measured by ST on its own (undocumented) COCO-person "
             "evaluation set, so not expected to equal ours. "
             + " ".join(f"*{card.column}* = {card.source}." for card in CARDS),
             f"* **measured**: `python -m ssd_mnv1.reproduce` on {n} images of `{data}`; every model "
             f"sees the same pixels (JPEG decoded by {decoders.get(decoder, decoder)}, ST's nearest "
             "stretch to S×S). ST-AP: IoU 0.4, +1-pixel IoU, all-point interpolation, crowd boxes as "
             "ordinary GT. *raw px* = uint8 pixels as the device feeds them; *ST input* = ST 2.0's host "
             "conversion round(x/scale + zp).",
             "",
             "### Measured with ST-AP 2.0 (ModelZoo 2.0 evaluator, no detection cap: the pipeline behind the 2.0 card)",
             ""]
    lines += _side_by_side(rows, sizes, "st_ap_20")
    lines += ["", "### Measured with ST-AP 2025 (objdet_metrics: clip to [0, 1], combined NMS, cap 100)", "",
              f"NMS: {nms_names.get(nms, nms)}.", ""]
    lines += _side_by_side(rows, sizes, "st_ap_25")
    lines += ["", "### All measurements", "",
              "COCO: pycocotools on original-image pixels, 2025 post-processing (top 100), crowd as ignore.", "",
              "| S | model | ST-AP 2.0 | ST-AP 2025 | COCO AP | COCO AP50 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['model']} | {_fmt(r['st_ap_20'])} | {_fmt(r['st_ap_25'])} | "
                     f"{_fmt(r['coco_ap'])} | {_fmt(r['coco_ap50'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_mnv1.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--reference-dir", required=True, type=Path, help="folder with ST's files (yours)")
    parser.add_argument("--data", required=True, help="evaluation dataset (COCO json/folder or YOLO layout)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[192, 224, 256], choices=[192, 224, 256])
    parser.add_argument("--limit", type=int, help="only the first N images (smoke runs)")
    parser.add_argument("--no-keras", action="store_true", help="skip the tf_keras run of ST's .h5")
    parser.add_argument("--decoder", default="tf", choices=("tf", "pil"),
                        help="JPEG decoder: tf (ST's, default; needs tensorflow) or pil (the dataset's)")
    parser.add_argument("--threads", type=int, help="PyTorch / TFLite compute threads (default: the "
                        "libraries' own; 1 is much faster on a machine whose cores are busy)")
    parser.add_argument("--st25-nms", default="tf", choices=("tf", "torch"),
                        help="NMS of ST-AP 2025 and COCO: tf (ST's own op, default) or torch")
    parser.add_argument("--out", help="also write the Markdown table to this file")
    parser.add_argument("--json", help="write the measured rows as JSON")
    args = parser.parse_args(argv)
    if not args.reference_dir.is_dir():
        raise NotADirectoryError(f"--reference-dir {args.reference_dir}: no such folder")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    rows = measure(args.reference_dir, args.data, args.sizes, limit=args.limit, keras=not args.no_keras,
                   decoder=args.decoder, st25_nms=args.st25_nms, threads=args.threads)
    table = to_markdown(rows, args.sizes, args.data)
    print(table)
    if args.out:
        atomic_write_text(args.out, table)
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run(main)
