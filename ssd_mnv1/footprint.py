"""Footprint of a detector: parameters, MACs, int8 TFLite size, peak activation memory, CPU latency,
and the arena TensorFlow Lite Micro allocates for it.

    python -m ssd_mnv1.footprint MODEL [--calib DIR] [--threads 1] [--runs 50]
    python -m ssd_mnv1.footprint --size S [S ...] [--classes C] [--alpha A] [--int8-outputs]
                                 [--ram KiB] [--flash KiB] [--json FILE]

MODEL is a ``.ckpt``/``.h5`` (exported on the fly to the ``--mcu`` int8 file, the one TFLite Micro
loads; random calibration images unless --calib, which changes no size) or an int8 ``.tflite``.
ST's published STM32 figures for the same resolution are printed beside ours and labelled as theirs
(ST published figures for 192, 224 and 256 only; at other sizes the ST columns are empty).

For a file TFLite Micro (TFLM, the ``mcu`` extra) loads, the arena bytes come from TFLM's own
allocation report (its RecordingMicroAllocator), next to ST's published activation RAM and weights
flash (Cube.AI 10.0, STM32H747) and next to the project's two estimates: the live-set peak (the
least any planner keeping each tensor whole needs) and a mirror of TFLM's greedy memory planner,
which gives TFLM's activation bytes exactly. The file's tensors alive at the live-set peak are named.

Without MODEL, ``--size`` gives the budget of a configuration that has no weights yet (size,
classes, width, output variant): for each size, the ``--mcu`` int8 file its export would write is
exported from seeded random weights and measured in TFLM (:mod:`ssd_mnv1.export.budget`; about 30 s
a size): MACs, flash, arena, the C bundle's arena with its margin, and with ``--ram`` / ``--flash``
whether it fits the part. The last line is the table as JSON.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from .cli import run
from .footprint_analysis import (count_macs, latency_ms, peak_activation_bytes, tflite_architecture, tflite_params,
                                 tflm_footprint, tflm_markdown)
from .zoo import RELEASES, st_release


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_mnv1.footprint", description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?",
                        help=".ckpt, .h5 or int8 .tflite, or a model zoo name (ssd_mnv1.zoo.MODEL_ZOO)")
    parser.add_argument("--calib", help="calibration images for the on-the-fly int8 export (default: random)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    budget = parser.add_argument_group("budget of a configuration without weights (no MODEL)")
    budget.add_argument("--size", type=int, nargs="+", metavar="S", help="input sizes (multiples of 32, 128-512)")
    budget.add_argument("--classes", type=int, default=1, help="classes without the background (default 1)")
    budget.add_argument("--alpha", type=float, default=0.25, help="MobileNet width (default 0.25)")
    budget.add_argument("--int8-outputs", action="store_true", help="the int8-output variant (export --int8-outputs)")
    budget.add_argument("--ram", type=float, metavar="KiB", help="RAM for the tensor arena: does it fit?")
    budget.add_argument("--flash", type=float, metavar="KiB", help="flash for the model file: does it fit?")
    budget.add_argument("--json", help="also write the budget table (JSON) to this file")
    args = parser.parse_args(argv)
    if (args.model is None) == (args.size is None):
        raise ValueError("give MODEL, or --size S [S ...] for a configuration without weights (not both)")
    budget_only = [f"--{name.replace('_', '-')}" for name in ("classes", "alpha", "int8_outputs", "ram", "flash", "json")
                   if getattr(args, name) != parser.get_default(name)]
    if args.model is not None and budget_only:
        raise ValueError(f"{', '.join(budget_only)}: for a configuration without weights (--size), not with MODEL")
    if args.size is not None:
        return _budget(args)

    from .export.pipeline import export, models_for_export
    from .export.tf_stage import quiet_tensorflow
    from .hub import resolve_model_file
    from .loading import model_format

    quiet_tensorflow()
    path = resolve_model_file(args.model)  # a model zoo name becomes its downloaded file
    with tempfile.TemporaryDirectory() as tmp:
        if model_format(path) == "tflite":
            tflite = path
            from .loading import build_model

            model = build_model(**tflite_architecture(path))
            size = model.input_size
            params = tflite_params(path)
            note = "conv weights + biases in the TFLite file, BN folded"
        else:
            model, _ = models_for_export(path)  # through ssd_mnv1.loading; a QAT model as exported
            size = model.input_size
            calib = args.calib
            if calib is None:
                calib = Path(tmp) / "calib"
                calib.mkdir()
                from PIL import Image

                rng = np.random.default_rng(0)
                for i in range(4):
                    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(calib / f"{i}.png")
            tflite = export(path, Path(tmp) / "export", "tflite-int8", calib=calib, mcu=True,
                            log=lambda *_: None).files["tflite-int8"]
            params = sum(p.numel() for p in model.parameters())
            note = "trainable PyTorch parameters, BN not folded"
        macs = count_macs(model, size)
        peak = peak_activation_bytes(tflite)
        ms = latency_ms(tflite, args.threads, args.runs)
        tflm = tflm_footprint(tflite)
        print(f"## Footprint of {path.name} ({size}x{size})\n")
        print("| quantity | ours |\n|---|---|")
        print(f"| parameters | {params:,} ({note}) |")
        print(f"| MACs per inference | {macs / 1e6:.1f} M |")
        print(f"| int8 TFLite size | {tflite.stat().st_size / 1024:.1f} KiB |")
        print(f"| peak activation memory, int8 graph (estimate: live-set peak, a lower bound) | "
              f"{peak / 1024:.1f} KiB |")
        if tflm["loads"]:
            print(f"| TFLite Micro arena (measured: TFLM's allocation report) | {tflm['arena_bytes'] / 1024:.1f} KiB "
                  f"({tflm['head_bytes'] / 1024:.1f} KiB activations + {tflm['tail_bytes'] / 1024:.1f} KiB "
                  f"runtime state) |")
        print(f"| CPU latency, TFLite interpreter, {args.threads} thread(s), this machine | {ms:.2f} ms (median of {args.runs}) |")
        if size in RELEASES:
            print(f"\n### ST's published figures for their {size} model (theirs, on STM32, not measured here)\n")
            print("| quantity | ST |\n|---|---|")
            for key, value in st_release(size).stm32.items():
                print(f"| {key} | {value} |")
        else:
            print(f"\nST published no figures for {size}x{size} (it released {', '.join(map(str, RELEASES))}).")
        print(tflm_markdown(tflm, size))
    return 0


def _budget(args) -> int:
    import json
    import sys

    from .export.budget import budget_markdown, measure
    from .export.tf_stage import quiet_tensorflow
    from .fileio import atomic_write_text, output_file
    from .specs import SUPPORTED_ALPHAS, resolution_spec

    for size in args.size:
        try:
            resolution_spec(size)
        except ValueError as exc:  # one error naming the option and the supported sizes
            raise ValueError(f"--size {size}: {exc}") from None
    if args.classes < 1:
        raise ValueError(f"--classes must be 1 or more, got {args.classes}")
    if args.alpha not in SUPPORTED_ALPHAS:
        raise ValueError(f"--alpha must be one of {', '.join(map(str, SUPPORTED_ALPHAS))}, got {args.alpha}")
    if args.json:
        output_file(args.json, "--json")
    quiet_tensorflow()
    budgets = []
    for k, size in enumerate(args.size, 1):
        print(f"[{k}/{len(args.size)}] exporting and measuring {size}x{size}, {args.classes} class(es)",
              file=sys.stderr, flush=True)
        budgets.append(measure(size, args.classes, args.alpha, int8_outputs=args.int8_outputs, ram_kib=args.ram,
                               flash_kib=args.flash))
    print(budget_markdown(budgets, args.ram, args.flash))
    line = json.dumps({"budgets": [b.to_dict() for b in budgets], "ram_kib": args.ram, "flash_kib": args.flash})
    if args.json:
        atomic_write_text(args.json, line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    run(main)
