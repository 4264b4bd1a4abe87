"""ST-AP of an int8 file under TensorFlow Lite Micro next to LiteRT's kernels, and TFLM's bit-exactness.

    python bench/tflm_parity.py FILE_MCU.tflite --data DIR [--dynamic FILE.tflite] [--limit N] [--json OUT]

FILE_MCU is a file TFLM loads (``python -m ssd_mnv1.export MODEL --to tflite-int8 --mcu ...``).
It is scored on the same decoded images under: TFLite Micro (``ssd_mnv1.runners.TFLMRunner``);
LiteRT with TFLite's reference kernels (``OpResolverType.BUILTIN_REF``, what TFLM's kernels are
ports of); LiteRT's builtin kernels without XNNPACK (what ``evaluate --tflite-kernels reference``
runs today); LiteRT with XNNPACK. ``--dynamic`` adds the dynamic-batch file of the same model under the same
three LiteRT kernel sets (for the reference kernels, a copy whose TILE opcode says version 2: that
resolver registers TILE up to version 2, though its kernel tiles int8). Every output of every
image under TFLM is compared with the reference kernels' (elements that differ, max |Δ|), and the
dynamic file's with the mcu file's under the same kernels. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ssd_mnv1.data import open_dataset
from ssd_mnv1.evaluation import evaluate, resize_all
from ssd_mnv1.fileio import atomic_write_text
from ssd_mnv1.runners import TFLiteRunner
from ssd_mnv1.runners import TFLMRunner

METRICS = ("st20", "st25")


class _Record:
    """Keeps every batch's outputs (the reference the others are compared with)."""

    def __init__(self, runner):
        self.runner, self.name, self.input_size = runner, runner.name, runner.input_size
        self.batches: list = []

    def __call__(self, images):
        outs = self.runner(images)
        self.batches.append(outs)
        return outs


class _Compare:
    """Compares every batch's outputs with the recorded ones, batch by batch, as evaluate() runs."""

    def __init__(self, runner, reference: list):
        self.runner, self.name, self.input_size = runner, runner.name, runner.input_size
        self.reference, self.i = reference, 0
        self.differing = [0, 0, 0]
        self.elements = [0, 0, 0]
        self.max_diff = [0.0, 0.0, 0.0]

    def __call__(self, images):
        outs = self.runner(images)
        for k, (a, b) in enumerate(zip(outs, self.reference[self.i])):
            self.differing[k] += int((a != b).sum())
            self.elements[k] += a.size
            self.max_diff[k] = max(self.max_diff[k], float(np.abs(a - b).max()))
        self.i += 1
        return outs

    def summary(self) -> dict:
        return {name: {"differing": d, "of": n, "max_abs_diff": m} for name, d, n, m in
                zip(("scores", "offsets", "anchors"), self.differing, self.elements, self.max_diff)}


def _tile_version_for_reference_kernels(src: str, dst: Path) -> Path:
    """A copy of ``src`` whose TILE opcode says version 2: LiteRT's reference-kernel resolver
    registers TILE up to version 2 only, though its kernel tiles int8 (what version 3 declares), so
    the dynamic-batch file loads there. Nothing else changes."""
    from ssd_mnv1.tflite_file import builtin_code, read, schema, to_bytes

    model = read(src).flatbuffer
    for code in model.operatorCodes:
        if builtin_code(code) == schema().BuiltinOperator.TILE:
            code.version = min(code.version, 2)
    dst.write_bytes(to_bytes(model))
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tflite", help="a file TFLite Micro loads (export --mcu)")
    parser.add_argument("--data", required=True, help="COCO json/folder or ST YOLO-layout folder")
    parser.add_argument("--dynamic", help="the dynamic-batch file of the same model (export without --mcu)")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    dataset = open_dataset(args.data)
    tflm = TFLMRunner(args.tflite)
    images = resize_all(dataset, tflm.input_size, workers=1, progress=False, limit=args.limit)
    n = len(images)

    def score(runner) -> tuple[dict, float]:
        t0 = time.perf_counter()
        ev = evaluate(runner, dataset, METRICS, images=images, limit=n, workers=0, progress=False)
        return ev.st_ap, time.perf_counter() - t0

    rows = {}
    REF, TFLM, BUILTIN, XNN = ("mcu file, LiteRT reference kernels (BUILTIN_REF)", "mcu file, TFLite Micro",
                               "mcu file, LiteRT builtin kernels (--tflite-kernels reference today)",
                               "mcu file, LiteRT XNNPACK")
    DYN_REF = "dynamic-batch file, LiteRT reference kernels (BUILTIN_REF; TILE opcode relabelled v3 -> v2)"
    DYN_BUILTIN, DYN_XNN = ("dynamic-batch file, LiteRT builtin kernels (--tflite-kernels reference today)",
                            "dynamic-batch file, LiteRT XNNPACK")
    reference = _Record(TFLiteRunner(args.tflite, reference=True))
    rows[REF] = score(reference)
    compare_tflm = _Compare(tflm, reference.batches)
    rows[TFLM] = score(compare_tflm)
    builtin = _Record(TFLiteRunner(args.tflite, builtin=True, num_threads=1))
    compare_builtin = _Compare(builtin, reference.batches)
    rows[BUILTIN] = score(compare_builtin)
    rows[XNN] = score(TFLiteRunner(args.tflite, num_threads=1))
    compare_dynamic = compare_dynamic_ref = None
    if args.dynamic:
        with tempfile.TemporaryDirectory() as tmp:
            relabelled = _tile_version_for_reference_kernels(args.dynamic, Path(tmp) / "dynamic_tile_v2.tflite")
            compare_dynamic_ref = _Compare(TFLiteRunner(relabelled, reference=True), reference.batches)
            rows[DYN_REF] = score(compare_dynamic_ref)
        compare_dynamic = _Compare(TFLiteRunner(args.dynamic, builtin=True, num_threads=1), builtin.batches)
        rows[DYN_BUILTIN] = score(compare_dynamic)
        rows[DYN_XNN] = score(TFLiteRunner(args.dynamic, num_threads=1))
    reference.batches.clear()
    builtin.batches.clear()

    print(f"{args.tflite} on {args.data}: {n} images, {tflm.input_size}x{tflm.input_size}\n")
    print("| runtime | ST-AP st20 | ST-AP st25 | time (s) |\n|---|---|---|---|")
    for name, (ap, secs) in rows.items():
        print(f"| {name} | {ap['st20']:.2f} | {ap['st25']:.2f} | {secs:.0f} |")
    ap = {k: v[0] for k, v in rows.items()}

    def delta(a: str, b: str) -> dict:
        return {m: round(ap[a][m] - ap[b][m], 4) for m in METRICS}

    arena = tflm.arena_report()
    result = {"file": args.tflite, "data": args.data, "images": n, "input_size": tflm.input_size, "st_ap": ap,
              "delta_tflm_minus_reference": delta(TFLM, REF),
              "delta_tflm_minus_builtin": delta(TFLM, BUILTIN),
              "tflm_vs_reference_outputs": compare_tflm.summary(),
              "builtin_vs_reference_outputs": compare_builtin.summary(),
              "tflm_arena": {"arena_bytes": arena.arena_bytes, "head_bytes": arena.head_bytes,
                             "tail_bytes": arena.tail_bytes}}
    if args.dynamic:
        result["dynamic"] = args.dynamic
        result["delta_mcu_minus_dynamic_reference"] = delta(REF, DYN_REF)
        result["delta_tflm_minus_dynamic_reference"] = delta(TFLM, DYN_REF)
        result["dynamic_vs_mcu_outputs_reference"] = compare_dynamic_ref.summary()
        result["delta_mcu_minus_dynamic_builtin"] = delta(BUILTIN, DYN_BUILTIN)
        result["delta_mcu_minus_dynamic_xnnpack"] = delta(XNN, DYN_XNN)
        result["delta_tflm_minus_dynamic_builtin"] = delta(TFLM, DYN_BUILTIN)
        result["dynamic_vs_mcu_outputs_builtin"] = compare_dynamic.summary()
    exact = all(v["differing"] == 0 for v in result["tflm_vs_reference_outputs"].values())
    print(f"\nTFLM vs LiteRT reference kernels, every output element of every image: "
          f"{'bit-identical' if exact else 'DIFFER'} {result['tflm_vs_reference_outputs']}")
    print(f"LiteRT builtin vs reference kernels: {result['builtin_vs_reference_outputs']}")
    if args.dynamic:
        print(f"dynamic vs mcu file, LiteRT reference kernels: {result['dynamic_vs_mcu_outputs_reference']}")
        print(f"dynamic vs mcu file, LiteRT builtin kernels: {result['dynamic_vs_mcu_outputs_builtin']}")
    for key in ("delta_tflm_minus_reference", "delta_tflm_minus_builtin", "delta_mcu_minus_dynamic_reference",
                "delta_tflm_minus_dynamic_reference", "delta_mcu_minus_dynamic_builtin",
                "delta_mcu_minus_dynamic_xnnpack", "delta_tflm_minus_dynamic_builtin"):
        if key in result:
            print(f"{key}: {result[key]}")
    line = json.dumps(result)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
