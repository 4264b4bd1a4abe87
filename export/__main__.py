"""Export a checkpoint or .h5 to ONNX / TFLite float32 / TFLite int8 with ST's I/O contract.

    python -m ssd_mnv1.export MODEL --to onnx|tflite-fp32|tflite-int8 --out DIR
                              [--calib DIR] [--per-tensor] [--ledger DATA_DIR]

Each target includes the ones before it. The int8 file has a uint8 input (scale 1/127.5, zero
point 127), a dynamic batch, and three float32 outputs (scores, offsets, anchors) in ST's order;
weights are per-channel unless --per-tensor (for the STM32MP25 NPU). --ledger evaluates every
produced stage (ST-AP, max |Δ| to the previous stage and to PyTorch float) and writes ledger.json /
ledger.md to DIR.
"""

from __future__ import annotations

import argparse
import time

from ssd_mnv1.cli import run
from ssd_mnv1.runners import INT8_INPUT_MODES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_mnv1.export", description=__doc__.split("\n")[0])
    parser.add_argument("model", help=".ckpt (float or QAT) or ST/Keras .h5")
    parser.add_argument("--to", default="tflite-int8", choices=("onnx", "tflite-fp32", "tflite-int8"))
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--calib", help="folder of calibration images (needed for tflite-int8)")
    parser.add_argument("--calib-count", type=int, default=100, help="calibration images to use (default 100)")
    parser.add_argument("--per-tensor", action="store_true", help="per-tensor int8 weights (STM32MP25 NPU)")
    parser.add_argument("--ledger", metavar="DATA_DIR", help="evaluate every stage on this dataset")
    parser.add_argument("--ledger-limit", type=int, help="evaluate only the first N ledger images")
    parser.add_argument("--int8-input", default="raw", choices=INT8_INPUT_MODES,
                        help="ledger: how images reach the uint8 input (default raw pixels, as on the device)")
    args = parser.parse_args(argv)

    from .pipeline import build_ledger, export, ledger_markdown, write_ledger
    from .tf_stage import quiet_tensorflow

    quiet_tensorflow()
    t0 = time.perf_counter()
    result = export(args.model, args.out, args.to, calib=args.calib, calib_count=args.calib_count,
                    per_tensor=args.per_tensor)
    print(f"export chain done in {time.perf_counter() - t0:.1f} s")
    if args.ledger:
        ledger = build_ledger(args.model, result, args.ledger, limit=args.ledger_limit, int8_input=args.int8_input)
        paths = write_ledger(ledger, args.out)
        print(ledger_markdown(ledger))
        print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    run(main)
