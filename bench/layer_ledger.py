"""Per-layer int8 quantization ledger: which layers cost ST-AP (export.layer_ledger).

    python bench/layer_ledger.py MODEL --data DIR --out DIR
        (--int8 FILE --fp32 FILE | --calib DIR [--per-tensor] [--[no-]equalize])
        [--calib DIR] [--calib-count 100]
        [--limit N] [--leave-one-out] [--threads N]

MODEL is the .ckpt / .h5 both TFLite files were exported from (not equalized: for an equalized
export let this script export). Without --int8/--fp32 the model is exported first (into --out,
with --calib, --per-tensor, --equalize) and the export's own fake-quant model is used. A float
model's fake-quant ranges are calibrated on --calib (the export's calibration images); a QAT
checkpoint uses its own. Writes layer_ledger.json, layer_ledger.md and layer_ledger.png to --out
and prints the table.
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help=".ckpt (float or QAT) or ST/Keras .h5")
    parser.add_argument("--data", required=True, help="evaluation dataset (COCO json/folder or YOLO folder)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--int8", help="int8 TFLite file exported from MODEL")
    parser.add_argument("--fp32", help="float32 TFLite file of the same export")
    parser.add_argument("--calib", help="calibration image folder (export and fake-quant ranges)")
    parser.add_argument("--calib-count", type=int, default=100)
    parser.add_argument("--per-tensor", action="store_true", help="export with per-tensor int8 weights")
    parser.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=None,
                        help="export: equalize before int8 (the exporter's default: on with --per-tensor)")
    parser.add_argument("--limit", type=int, help="only the first N images of --data")
    parser.add_argument("--leave-one-out", action="store_true",
                        help="also the ST-AP with all layers quantized but one (doubles the time)")
    parser.add_argument("--threads", type=int, help="torch / TFLite threads")
    args = parser.parse_args(argv)
    if (args.int8 is None) != (args.fp32 is None):
        parser.error("--int8 and --fp32 go together")

    import torch

    from ssd_mnv1.export.layer_ledger import build_layer_ledger, layer_ledger_markdown, write_layer_ledger
    from ssd_mnv1.export.tf_stage import quiet_tensorflow

    quiet_tensorflow()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    int8, fp32, model = args.int8, args.fp32, args.model
    if int8 is None:
        from ssd_mnv1.export.pipeline import export

        result = export(args.model, args.out, "tflite-int8", calib=args.calib, calib_count=args.calib_count,
                        per_tensor=args.per_tensor, equalize=args.equalize)
        int8, fp32 = result.files["tflite-int8"], result.files["tflite-fp32"]
        # The fake-quant model the int8 file was converted from (equalized, QAT or calibrated).
        model = result.models.get("pytorch-fake-quant", model)
    ledger = build_layer_ledger(model, int8, fp32, args.data, calib_images=args.calib,
                                calib_count=args.calib_count, limit=args.limit,
                                leave_one_out=args.leave_one_out, num_threads=args.threads)
    ledger["model"] = str(args.model)
    paths = write_layer_ledger(ledger, args.out)
    print(layer_ledger_markdown(ledger))
    print(f"wrote {', '.join(map(str, paths))} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    from ssd_mnv1.cli import run

    run(main)
