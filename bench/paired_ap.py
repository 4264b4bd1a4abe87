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
the dataset resolves it. Prints a table and one JSON line. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _open(spec: str, threads: int):
    """(label, runner) of ``MODEL[@KERNELS]``."""
    from ssd_mnv1.runners import EVAL_TORCH_OPTIONS, QDQ_ARITHMETIC, TFLITE_KERNELS, open_runner

    path, _, kernels = spec.partition("@")
    suffix = Path(path).suffix.lower()
    if not Path(path).is_file():
        raise SystemExit(f"error: {path}: no such model file")
    if suffix == ".tflite":
        kernels = kernels or "xnnpack"
        if kernels not in TFLITE_KERNELS:
            raise SystemExit(f"error: {spec}: a .tflite runs with @{', @'.join(TFLITE_KERNELS)}, not @{kernels}")
        return f"{Path(path).name}@{kernels}", open_runner(path, num_threads=threads, tflite_kernels=kernels)
    if suffix == ".onnx":
        kernels = kernels or "int8"
        if kernels not in QDQ_ARITHMETIC:
            raise SystemExit(f"error: {spec}: an .onnx runs with @{', @'.join(QDQ_ARITHMETIC)}, not @{kernels}")
        return f"{Path(path).name}@{kernels}", open_runner(path, num_threads=threads, qdq_arithmetic=kernels)
    if kernels:
        raise SystemExit(f"error: {spec}: @{kernels} applies to .tflite and .onnx files only")
    return Path(path).name, open_runner(path, num_threads=threads, **EVAL_TORCH_OPTIONS)


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
    from ssd_mnv1.data import open_dataset
    from ssd_mnv1.evaluate import evaluate, resize_all
    from ssd_mnv1.export.tf_stage import quiet_tensorflow
    from ssd_mnv1.fileio import atomic_write_text
    from ssd_mnv1.metrics.bootstrap import BOOTSTRAP_SAMPLES, bootstrap_comparison

    quiet_tensorflow()
    threads = plan_cpus(purpose="evaluate").threads
    torch.set_num_threads(threads)
    runners = [_open(spec, threads) for spec in args.models]
    names = [label for label, _ in runners]
    for k, (spec, (label, runner)) in enumerate(zip(args.models, runners)):
        if names.count(label) > 1 and args.models.count(spec) == 1:  # one name, two runs' exports
            runners[k] = (str(Path(spec.partition("@")[0]).parent / label), runner)
    sizes = {runner.input_size for _, runner in runners}
    if len(sizes) != 1:
        raise SystemExit(f"error: the models take different input sizes {sorted(sizes)}; compare one size at a time")
    dataset = open_dataset(args.data)
    images = resize_all(dataset, sizes.pop(), progress=False, limit=args.limit)
    results = []
    for label, runner in runners:
        result = evaluate(runner, dataset, ("st20",), images=images, limit=len(images), progress=False)
        results.append((label, result.st_results["st20"]))
        print(f"  {label}: ST-AP {result.st_ap['st20']:.2f}", flush=True)

    samples = args.samples or BOOTSTRAP_SAMPLES
    labels = [label for label, _ in results]
    cmp = bootstrap_comparison([r for _, r in results], samples, args.seed, args.confidence)
    level = f"{args.confidence:.0%}"
    print(f"\nST-AP 2.0 on {args.data}: {len(images)} images; {level} intervals from {samples} resamples "
          "of the images, shared by all models (paired)")
    width = max(len(label) for label in labels)
    print(f"{'model':<{width}}  {'ST-AP [' + level + ']':>24}")
    for i, label in enumerate(labels):
        own = cmp.interval(i)
        print(f"{label:<{width}}  {own.value:6.2f} [{own.low:6.2f}, {own.high:6.2f}]")
    print(f"\n{'difference (row minus column)':<{2 * width + 3}}  {'Δ ST-AP [' + level + ']':>24}  resolved")
    pairs = []
    for i, j in itertools.combinations(range(len(labels)), 2):
        diff = cmp.difference(j, i)
        resolved = diff.low > 0 or diff.high < 0
        print(f"{labels[j]:<{width}} - {labels[i]:<{width}}  {str(diff):>24}  {'yes' if resolved else 'no'}")
        pairs.append({"model": labels[j], "minus": labels[i], **diff.__dict__, "resolved": resolved})
    rows = [{"model": label, **cmp.interval(i).__dict__} for i, label in enumerate(labels)]
    out = {"data": str(args.data), "images": len(images), "samples": samples, "confidence": args.confidence,
           "seed": args.seed, "models": rows, "differences": pairs}
    print(json.dumps(out))
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
