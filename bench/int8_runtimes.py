"""One int8 model, several runtimes: ST-AP of the int8 TFLite and the QDQ ONNX of the same export under
each runtime's kernels, and how far their confident detections agree pairwise.

    python bench/int8_runtimes.py EXPORT_DIR --data DIR [--limit N] [--json OUT]

EXPORT_DIR holds one ``*_int8*.tflite`` and one ``*_qdq*.onnx`` written by the same
``python -m ssd_mnv1.export MODEL --to tflite-int8 onnx-qdq [--mcu] ...``. Runtimes: LiteRT with
XNNPACK, LiteRT's builtin kernels, TFLite's reference kernels (= TensorFlow Lite Micro bit for bit;
``--mcu`` files only), and onnxruntime on the QDQ graph three ways: its integer kernels with
``session.x64quantprecision`` (what ``evaluate`` runs, ``OnnxRunner``'s default), the ONNX spec's float
definition (``qdq_arithmetic="float"``: each op in float between DequantizeLinear/QuantizeLinear) and
onnxruntime's own defaults (integer kernels that, on x86 CPUs without VNNI, saturate int16 sums of
u8 x s8 products). Agreement: detections scoring > 0.5 (ST-2025 post-processing, top 100) matched
one to one at IoU >= 0.5, as in the export ledger. Prints a table, then one JSON line. Nothing here
is timed. The comparison is :func:`ssd_mnv1.export.ledger.compare_int8_runtimes`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--data", required=True, help="COCO json/folder or ST YOLO-layout folder")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    from ssd_mnv1.export.ledger import compare_int8_runtimes, int8_runtimes_table
    from ssd_mnv1.export.tf_stage import quiet_tensorflow
    from ssd_mnv1.fileio import atomic_write_text

    quiet_tensorflow()
    try:
        summary = compare_int8_runtimes(args.export_dir, args.data, limit=args.limit,
                                        log=functools.partial(print, flush=True))
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print("\n".join(int8_runtimes_table(summary)))
    print(json.dumps(summary))
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
