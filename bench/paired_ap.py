"""Is an ST-AP difference real on this dataset? Each model's ST-AP and every pairwise difference,
with paired bootstrap intervals over the images (:mod:`ssd_mnv1.metrics.bootstrap`).

    python bench/paired_ap.py MODEL[@KERNELS] MODEL[@KERNELS] ... --data DIR [--limit N]
                              [--samples 2000] [--confidence 0.95] [--seed 0] [--json OUT]

MODEL is anything ``evaluate`` takes (.ckpt, .h5, .onnx, .tflite), all of one input size.
``@KERNELS`` picks a runtime: for a .tflite ``xnnpack`` (default), ``builtin`` or
``reference`` (= TensorFlow Lite Micro, ``--mcu`` files); for a QDQ .onnx ``int8`` (default,
onnxruntime's integer kernels, as ``evaluate``) or ``float`` (the ONNX spec's float definition).
The same file may appear with several runtimes. Every model scores the same decoded images, so a
resample of the images is shared by all (paired): an interval of a difference that excludes 0 means
the dataset resolves it. Prints a table and one JSON line. Nothing here is timed. The comparison is
:func:`ssd_mnv1.evaluation.paired_st_ap`.
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
    parser.add_argument("models", nargs="+", metavar="MODEL[@KERNELS]")
    parser.add_argument("--data", required=True, help="COCO json/folder or ST YOLO-layout folder")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--samples", type=int, default=None, help="bootstrap resamples (default 2000)")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if len(args.models) < 2:
        raise SystemExit("error: give at least two models to compare")

    import torch

    from ssd_mnv1.cpus import plan_cpus
    from ssd_mnv1.export.tf_stage import quiet_tensorflow
    from ssd_mnv1.fileio import atomic_write_text
    from ssd_mnv1.evaluation import paired_st_ap, paired_st_ap_table

    quiet_tensorflow()
    threads = plan_cpus(purpose="evaluate").threads
    torch.set_num_threads(threads)
    try:
        out = paired_st_ap(args.models, args.data, limit=args.limit, samples=args.samples, seed=args.seed,
                           confidence=args.confidence, threads=threads, log=functools.partial(print, flush=True))
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print("\n".join(paired_st_ap_table(out)))
    print(json.dumps(out))
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
