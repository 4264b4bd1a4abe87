"""Does the budget of a configuration without weights (``footprint --size``) equal TFLM's measured
arena and flash of a file later exported from real weights of that configuration?

    python bench/budget_check.py --sizes 160 224 320 --classes 3 --calib DIR [--int8-outputs] [--backbone H5]

For each size: the budget (:func:`ssd_mnv1.export.budget.measure`: seeded random weights, random
calibration) and the ``--mcu`` int8 export of another model of that configuration (the ImageNet
MobileNet backbone, a differently seeded head, calibrated on DIR's images), measured in TFLM.
The arena must be equal. The flash may not: an untrained head's biases are Keras zeros, equal
constants the TFLite converter stores once (``export_constant_buffers`` counts the file's), which
a trained model, like the budget's random one, does not have. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ssd_mnv1.checkpoint import save_checkpoint
from ssd_mnv1.export.budget import measure
from ssd_mnv1.export.pipeline import export
from ssd_mnv1.export.tf_stage import quiet_tensorflow
from ssd_mnv1.footprint_analysis import tflm_footprint
from ssd_mnv1.loading import build_model
from ssd_mnv1.tflite_file import read as read_tflite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 224, 320])
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--calib", required=True)
    parser.add_argument("--int8-outputs", action="store_true")
    parser.add_argument("--backbone", default="mobilenet_v1_025_224_imagenet",
                        help="ImageNet MobileNet .h5 (a path, or its zoo name)")
    args = parser.parse_args()
    quiet_tensorflow()
    rows = []
    for size in args.sizes:
        budget = measure(size, args.classes, int8_outputs=args.int8_outputs)
        torch.manual_seed(1)
        model = build_model(input_size=size, num_classes=args.classes, weights=args.backbone)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = save_checkpoint(model, Path(tmp) / f"imagenet_{size}.ckpt")
            result = export(ckpt, Path(tmp) / "export", "tflite-int8", calib=args.calib, calib_count=20, mcu=True,
                            int8_outputs=args.int8_outputs, log=lambda *_: None)
            real = tflm_footprint(result.files["tflite-int8"])
            constants = sum(1 for b in read_tflite(result.files["tflite-int8"]).buffers if b)
        rows.append({"size": size, "export_constant_buffers": constants,
                     "budget_arena": budget.arena_bytes, "export_arena": real["arena_bytes"],
                     "budget_flash": budget.flash_bytes, "export_flash": real["flash_bytes"],
                     "budget_head": budget.head_bytes, "export_head": real["head_bytes"]})
        r = rows[-1]
        print(f"{size}: arena budget {r['budget_arena']:,} export {r['export_arena']:,}; flash budget "
              f"{r['budget_flash']:,} export {r['export_flash']:,}", flush=True)
    print(json.dumps({"classes": args.classes, "int8_outputs": args.int8_outputs, "rows": rows,
                      "arena_equal": all(r["budget_arena"] == r["export_arena"] for r in rows),
                      "flash_equal": all(r["budget_flash"] == r["export_flash"] for r in rows)}))


if __name__ == "__main__":
    main()
