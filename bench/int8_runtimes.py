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
is timed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _onnxruntime_defaults(runner):
    """``runner`` on a session with onnxruntime's default options (no ``session.x64quantprecision``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    runner.session = ort.InferenceSession(str(runner.path), opts, providers=["CPUExecutionProvider"])
    return runner


def _one(folder: Path, pattern: str) -> Path:
    if not folder.is_dir():
        raise SystemExit(f"error: {folder}: no such export folder")
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"error: {folder}: expected one {pattern} file, found {len(found)}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--data", required=True, help="COCO json/folder or ST YOLO-layout folder")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    from ssd_mnv1.data import open_dataset
    from ssd_mnv1.evaluate import evaluate, resize_all
    from ssd_mnv1.fileio import atomic_write_text
    from ssd_mnv1.export.pipeline import CONFIDENT_SCORE, _Recording, _top_detections
    from ssd_mnv1.export.tf_stage import quiet_tensorflow
    from ssd_mnv1.metrics import detection_agreement
    from ssd_mnv1.runners import OnnxRunner, TFLiteRunner

    quiet_tensorflow()
    tflite, qdq = _one(args.export_dir, "*_int8*.tflite"), _one(args.export_dir, "*_qdq*.onnx")
    runners = {"TFLite XNNPACK": TFLiteRunner(tflite), "TFLite builtin": TFLiteRunner(tflite, builtin=True)}
    if tflite.stem.endswith("_mcu"):
        runners["TFLite reference (= TFLM)"] = TFLiteRunner(tflite, reference=True)
    runners["QDQ, onnxruntime int8 (evaluate's)"] = OnnxRunner(qdq)
    runners["QDQ, onnxruntime float (ONNX spec)"] = OnnxRunner(qdq, qdq_arithmetic="float")
    runners["QDQ, onnxruntime defaults"] = _onnxruntime_defaults(OnnxRunner(qdq))
    dataset = open_dataset(args.data)
    size = next(iter(runners.values())).input_size
    images = resize_all(dataset, size, progress=False, limit=args.limit)
    st_ap, confident = {}, {}
    for name, runner in runners.items():
        recording = _Recording(runner)
        st_ap[name] = evaluate(recording, dataset, ("st20",), images=images, limit=len(images),
                               progress=False).st_ap["st20"]
        anchors = runner(images[:1])[2][0]  # each file's own anchor output, as a device decodes with
        confident[name] = _top_detections(recording.outputs(), anchors, CONFIDENT_SCORE)
        print(f"{name:40s} ST-AP {st_ap[name]:.2f}", flush=True)
    pairs = {f"{a} | {b}": detection_agreement(confident[a], confident[b]).fraction
             for a, b in itertools.combinations(runners, 2)}
    print(f"\nboxes > {CONFIDENT_SCORE} agree ({len(images)} images):")
    for pair, fraction in pairs.items():
        print(f"  {100 * fraction:6.2f} %  {pair}")
    summary = {"tflite": str(tflite), "qdq": str(qdq), "images": len(images), "st_ap_20": st_ap,
               f"agreement_above_{CONFIDENT_SCORE}": pairs}
    print(json.dumps(summary))
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
