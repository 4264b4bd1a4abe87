"""QDQ ONNX vs int8 TFLite from the same model and calibration: scales, ST-AP and box agreement.

    python bench/qdq_parity.py MODEL --calib DIR --data DIR [--calib-count 100] [--per-tensor]
                               [--out DIR] [--limit N]

MODEL is a .ckpt or an ST .h5. One export writes both files (``--to tflite-int8 onnx-qdq``), so
they come from the same fake-quant model; the export ledger scores every stage on DATA. Prints the
scale comparison, ST-AP of the QDQ file, of the int8 TFLite (XNNPACK and reference kernels) and of
the fake-quant model, the box agreement of detections scoring above 0.5, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--calib", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--calib-count", type=int, default=100)
    parser.add_argument("--per-tensor", action="store_true")
    parser.add_argument("--out", help="output folder (default: a temporary one)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    args = parser.parse_args(argv)

    from ssd_mnv1.export.ledger import CONFIDENT_SCORE, build_ledger
    from ssd_mnv1.export.pipeline import export
    from ssd_mnv1.export.qdq_audit import compare_scales, format_scale_report
    from ssd_mnv1.export.tf_stage import quiet_tensorflow

    quiet_tensorflow()
    out = Path(args.out or tempfile.mkdtemp(prefix="qdq_parity_"))
    result = export(args.model, out, ("tflite-int8", "onnx-qdq"), calib=args.calib, calib_count=args.calib_count,
                    per_tensor=args.per_tensor, log=lambda *_: None)
    scales = compare_scales(result.files["onnx-qdq"], result.files["tflite-int8"])
    print(format_scale_report(scales))
    stages = {r["stage"]: r for r in build_ledger(args.model, result, args.data, limit=args.limit)["stages"]}
    qdq, tfl, fq = stages["onnx-qdq"], stages["tflite-int8"], stages["pytorch-fake-quant"]
    summary = {
        "model": args.model, "images": qdq["images"], "per_tensor": args.per_tensor,
        "st_ap_qdq": qdq["st_ap_20"], "st_ap_tflite": tfl["st_ap_20"],
        "st_ap_tflite_reference_kernels": tfl["st_ap_20_reference_kernels"], "st_ap_fake_quant": fq["st_ap_20"],
        "st_ap_diff_qdq_minus_tflite": round(qdq["st_ap_20"] - tfl["st_ap_20"], 4),
        f"agreement_above_{CONFIDENT_SCORE}_qdq_vs_{qdq['confident_agreement_vs']}": qdq["confident_det_agreement"],
        "agreement_top100_qdq_vs_tflite": qdq["det_agreement_prev"],
        f"agreement_above_{CONFIDENT_SCORE}_tflite_vs_fake_quant": tfl["confident_det_agreement"],
        "scales": {k: v for k, v in scales.items() if k != "convs"},
        "files": {"qdq": str(result.files["onnx-qdq"]), "tflite": str(result.files["tflite-int8"])},
    }
    print(f"ST-AP: QDQ {qdq['st_ap_20']:.2f}, TFLite int8 {tfl['st_ap_20']:.2f} (reference kernels "
          f"{tfl['st_ap_20_reference_kernels']:.2f}), fake-quant {fq['st_ap_20']:.2f}; boxes > {CONFIDENT_SCORE} "
          f"agree QDQ vs {qdq['confident_agreement_vs']}: {100 * qdq['confident_det_agreement']:.2f} %")
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
