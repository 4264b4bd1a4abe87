"""The device path end to end: TensorFlow Lite Micro + the C bundle's post-processor, next to TFLM +
the Python deploy post-processing, on the same TFLM outputs.

    python bench/tflm_c_parity.py FILE_MCU.tflite --data DIR [--limit N] [--json OUT]

FILE_MCU is an int8 ``--mcu`` export (float outputs, or ``--int8-outputs``: then the C is fed TFLM's
int8 codes with their scales, as on the device). TFLM runs each image once; its outputs are post-processed by
``ssd_mnv1.postprocess`` (variant ``deploy``) and by ``ssd_mnv1/c/ssd_postprocess.c`` (through
ctypes: ``evaluate --postprocess c``), and both are scored by the same evaluator (ST-AP 2.0 and
2025 of the deploy detections). Also counts the images whose detections differ at all (boxes,
scores, labels, order). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ssd_mnv1.data import open_dataset
from ssd_mnv1.evaluation import evaluate, resize_all
from ssd_mnv1.fileio import atomic_write_text
from ssd_mnv1.int8 import dequantize
from ssd_mnv1.postprocess import postprocess
from ssd_mnv1.postprocess_c import postprocess_c
from ssd_mnv1.runners import TFLMRunner

METRICS = ("st20", "st25")


class _Replay:
    """Runs TFLM on the first call for each batch, replays its outputs on the next calls."""

    def __init__(self, runner):
        self.runner, self.name, self.input_size = runner, runner.name, runner.input_size
        self.outputs: dict[bytes, tuple] = {}

    def __call__(self, images):
        key = images.tobytes()
        if key not in self.outputs:
            self.outputs[key] = self.runner(images)
        return self.outputs[key]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in ((a.boxes, b.boxes), (a.scores, b.scores),
                                                                  (a.labels, b.labels)))


def _codes(values: np.ndarray, quantization: tuple[float, int]) -> np.ndarray:
    """TFLM's int8 codes back from their dequantized values (exact: checked by dequantizing again)."""
    scale, zero_point = quantization
    codes = np.clip(np.rint(values.astype(np.float64) / np.float32(scale)) + zero_point, -128, 127).astype(np.int8)
    if not np.array_equal(dequantize(codes, scale, zero_point), values):
        raise RuntimeError("the int8 codes could not be recovered from the dequantized outputs")
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runner = _Replay(TFLMRunner(args.model))
    dataset = open_dataset(args.data)
    images = resize_all(dataset, runner.input_size, progress=False, limit=args.limit)
    report = {"model": args.model, "images": len(images)}
    for name in ("python", "c"):
        t0 = time.perf_counter()
        result = evaluate(runner, dataset, METRICS, images=images, limit=len(images), progress=False,
                          postprocessing=name)
        report[name] = {**{f"st_ap_{m[2:]}": result.st_ap[m] for m in METRICS},
                        "seconds": round(time.perf_counter() - t0, 1)}
    differ = detections = 0
    t_py = t_c = 0.0
    tflm = runner.runner
    int8_outputs = tflm.num_outputs == 2  # export --int8-outputs: the C gets TFLM's int8 codes, as on the device
    quantization = dict(zip(("scores", "offsets"), tflm.output_quantization))
    for outs in runner.outputs.values():
        c_inputs = outs
        if int8_outputs:
            codes = [_codes(x, quantization[name]) for x, name in zip(outs[:2], ("scores", "offsets"))]
            c_inputs = (*codes, outs[2])
        t0 = time.perf_counter()
        py = postprocess(*outs)
        t1 = time.perf_counter()
        c = postprocess_c(*c_inputs, quantization=quantization if int8_outputs else None)
        t_c += time.perf_counter() - t1
        t_py += t1 - t0
        differ += sum(not _same(a, b) for a, b in zip(py, c))
        detections += sum(len(d) for d in py)
    report.update({"images_whose_detections_differ": differ, "detections": detections,
                   "postprocess_ms_per_image": {"python": round(1e3 * t_py / max(1, len(images)), 3),
                                                "c": round(1e3 * t_c / max(1, len(images)), 3)}})
    print(f"{'post-processing':<22} {'ST-AP 2.0':>10} {'ST-AP 2025':>11}   (deploy detections of TFLM's outputs)")
    for name in ("python", "c"):
        print(f"{name:<22} {report[name]['st_ap_20']:10.2f} {report[name]['st_ap_25']:11.2f}")
    print(f"images whose detections differ: {differ} of {len(images)} ({detections} detections)")
    line = json.dumps(report)
    if args.json:
        atomic_write_text(args.json, line + "\n")
    print(line)


if __name__ == "__main__":
    main()
