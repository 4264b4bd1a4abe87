"""ST's published AP next to what our evaluator measures for ST's own files and for our port.

    python -m ssd_mnv1.reproduce [--reference-dir DIR] --data DIR [--sizes 192 224 256] [--out FILE.md]
                                 [--json FILE.json] [--decoder tf|pil] [--st25-nms tf|torch]
                                 [--threads N] [--limit N] [--no-keras]

DIR (reference) holds ST's files as ST's model zoo lays them out (names and published figures:
``ssd_mnv1.zoo``); without it, ST's files are fetched by name into the model zoo cache
(``ssd_mnv1.hub``: downloaded once, sha256-checked).
Each image is decoded and resized once per size, and every model runs on exactly those pixels. The
default decoder is ST's own (``tf.io.decode_image``, whose fast IDCT differs from PIL's by a few
levels on most pixels), and the 2025 variant and COCO use ST's own NMS op (TF's
``combined_non_max_suppression``, whose order among equal int8 scores differs from torchvision's), so
that ST's files run here give what ST's evaluation code would. The library is
:mod:`ssd_mnv1.reproduction`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import run
from .fileio import atomic_write_text, output_file
from .reproduction import measure, to_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_mnv1.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--reference-dir", type=Path,
                        help="folder with ST's files (default: fetch them by name into the model zoo cache)")
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
    for option, path in (("--out", args.out), ("--json", args.json)):
        if path:
            output_file(path, option)
    if args.reference_dir is None:
        from .hub import fetch_release, zoo_dir

        for size in args.sizes:
            fetch_release(size)
        args.reference_dir = zoo_dir()
    elif not args.reference_dir.is_dir():
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
