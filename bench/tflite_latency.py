"""int8 TFLite latency: our export of ST's .h5 vs ST's own int8 file, same interpreter, one thread.

    python bench/tflite_latency.py --reference-dir ../shared/reference \
        --calib ../shared/data/coco2017_person_train/images [--sizes 192 224 256] [--runs 50] [--rounds 3] \
        [--builtin]

For each size it exports ST's .h5 through our importer (the full chain .h5 -> ONNX -> onnx2tf ->
TFLite fp32 -> int8, calibration included, is timed; TensorFlow and onnx2tf are imported before
the clock starts so every size is timed alike), then times both int8 files in one process with
the same interpreter (ai-edge-litert, XNNPACK unless --builtin, one thread), interleaved so that
machine noise hits both alike, and prints the median latencies and their ratio. Batch 1, a
fixed random uint8 image. Exports go to a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def median_latency_ms(interpreter, x: np.ndarray, runs: int) -> float:
    inp = interpreter.get_input_details()[0]["index"]
    interpreter.set_tensor(inp, x)
    interpreter.invoke()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interpreter.set_tensor(inp, x)
        interpreter.invoke()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-dir", type=Path, required=True, help="ST's files (../shared/reference)")
    parser.add_argument("--calib", required=True, help="calibration image folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[192, 224, 256], choices=(192, 224, 256))
    parser.add_argument("--runs", type=int, default=50, help="timed invocations per round (median taken)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per file (median of medians)")
    parser.add_argument("--builtin", action="store_true", help="TFLite's builtin kernels instead of XNNPACK")
    args = parser.parse_args(argv)

    from ssd_mnv1.export.tf_stage import quiet_tensorflow

    quiet_tensorflow()
    t0 = time.perf_counter()
    import onnx2tf  # noqa: F401  (imported here so that no size's chain time includes it)
    import tensorflow  # noqa: F401

    from ssd_mnv1.export.pipeline import export
    from ssd_mnv1.runners import make_interpreter
    from ssd_mnv1.zoo import st_files

    imports_s = time.perf_counter() - t0
    files = {}
    for size in args.sizes:
        st = st_files(args.reference_dir, size, must_exist=True)
        files[size] = (st.h5, st.int8_tflite)
    kernels = "builtin kernels" if args.builtin else "XNNPACK"
    print(f"ai-edge-litert interpreter, {kernels}, 1 thread, batch 1; median of {args.rounds} interleaved rounds "
          f"x {args.runs} runs; TensorFlow + onnx2tf import {imports_s:.1f} s (not in the chain times)\n")
    print("| S | export chain (s) | ours int8 (ms) | ST int8 (ms) | ours/ST | ours KiB | ST KiB |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            h5, st_path = files[size]
            t0 = time.perf_counter()
            result = export(h5, Path(tmp) / str(size), "tflite-int8", calib=args.calib, log=lambda *_: None)
            chain_s = time.perf_counter() - t0
            ours_path = result.files["tflite-int8"]
            ours = make_interpreter(ours_path, num_threads=1, builtin=args.builtin)
            st = make_interpreter(st_path, num_threads=1, builtin=args.builtin)
            ours.allocate_tensors()
            st.allocate_tensors()
            x = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
            t_ours, t_st = [], []
            for _ in range(args.rounds):  # interleave so that machine noise hits both alike
                t_ours.append(median_latency_ms(ours, x, args.runs))
                t_st.append(median_latency_ms(st, x, args.runs))
            a, b = statistics.median(t_ours), statistics.median(t_st)
            print(f"| {size} | {chain_s:.1f} | {a:.2f} | {b:.2f} | {a / b:.3f} | "
                  f"{ours_path.stat().st_size / 1024:.1f} | {st_path.stat().st_size / 1024:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    from ssd_mnv1.cli import run

    run(main)
