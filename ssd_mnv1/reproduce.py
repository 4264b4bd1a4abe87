"""ST's published AP next to what our evaluator measures for ST's own files and for our port.

    python -m ssd_mnv1.reproduce --reference-dir DIR --data DIR [--sizes 192 224 256] [--out FILE.md]

DIR (reference) holds ST's files as ST's model zoo lays them out:
``st_ssd_mobilenet_v1_025_<S>/st_ssd_mobilenet_v1_025_<S>{.h5,_int8.tflite}``. Nothing is downloaded.
Each image is decoded and resized once per size, and every model runs on exactly those pixels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import run
from .fileio import atomic_write_text

#: ST's published AP (%). The 2.0 card ships with the .h5/.tflite files of ModelZoo 2.0 (int8 only);
#: the current card's files may be retrained weights (st_reference §11).
PUBLISHED = {
    "ModelZoo 2.0 card, int8 (these files)": {192: 33.70, 224: 44.45, 256: 46.26},
    "current card, int8 (possibly other weights)": {192: 35.80, 224: 46.10, 256: 50.50},
    "current card, float (possibly other weights)": {192: 35.80, 224: 46.90, 256: 51.00},
}


def st_files(reference_dir: Path, size: int) -> dict[str, Path]:
    folder = reference_dir / f"st_ssd_mobilenet_v1_025_{size}"
    return {"h5": folder / f"st_ssd_mobilenet_v1_025_{size}.h5",
            "tflite": folder / f"st_ssd_mobilenet_v1_025_{size}_int8.tflite"}


def _keras_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tf_keras") is not None


def measure(reference_dir: Path, data: str, sizes: list[int], metrics=("st20", "st25", "coco"),
            limit: int | None = None, keras: bool = True) -> list[dict]:
    from .data import open_dataset
    from .evaluate import evaluate, resize_all
    from .runners import KerasRunner, TFLiteRunner, TorchRunner
    from .weights import load_keras_h5

    dataset = open_dataset(data)
    rows = []
    for size in sizes:
        files = st_files(reference_dir, size)
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"missing ST reference file(s): {', '.join(missing)}")
        images = resize_all(dataset, size)
        if limit is not None:
            images = images[:limit]
        runners = [("ST float .h5, our PyTorch port", TorchRunner(load_keras_h5(files["h5"])))]
        if keras and _keras_available():
            runners.insert(0, ("ST float .h5, Keras (tf_keras)", KerasRunner(files["h5"])))
        runners += [("ST int8 .tflite, raw uint8 pixels", TFLiteRunner(files["tflite"], "raw")),
                    ("ST int8 .tflite, ST host input conversion", TFLiteRunner(files["tflite"], "st"))]
        for label, runner in runners:
            res = evaluate(runner, dataset, metrics, images=images, limit=len(images))
            rows.append({"size": size, "model": label, "images": res.images,
                         "st_ap_20": res.st_ap.get("st20"), "st_ap_25": res.st_ap.get("st25"),
                         "coco_ap": (res.coco or {}).get("AP"), "coco_ap50": (res.coco or {}).get("AP50")})
    return rows


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def to_markdown(rows: list[dict], sizes: list[int], data: str) -> str:
    lines = ["### Published by ST (their evaluation set, not ours)", "",
             "| source | " + " | ".join(str(s) for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for source, values in PUBLISHED.items():
        lines.append(f"| {source} | " + " | ".join(_fmt(values[s]) for s in sizes) + " |")
    n = rows[0]["images"] if rows else 0
    lines += ["", f"### Measured by `python -m ssd_mnv1.reproduce` on `{data}` ({n} images)", "",
              "ST-AP: IoU 0.4, +1-pixel IoU, all-point, crowd as GT (2.0: no cap; 2025: cap 100). "
              "COCO: pycocotools on original pixels.", "",
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
    parser.add_argument("--out", help="also write the Markdown table to this file")
    parser.add_argument("--json", help="write the measured rows as JSON")
    args = parser.parse_args(argv)
    if not args.reference_dir.is_dir():
        raise NotADirectoryError(f"--reference-dir {args.reference_dir}: no such folder")
    rows = measure(args.reference_dir, args.data, args.sizes, limit=args.limit, keras=not args.no_keras)
    table = to_markdown(rows, args.sizes, args.data)
    print(table)
    if args.out:
        atomic_write_text(args.out, table)
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run(main)
