"""Footprint of a detector: parameters, MACs, int8 TFLite size, peak activation memory, CPU latency,
and the arena TensorFlow Lite Micro allocates for it.

    python -m ssd_mnv1.footprint MODEL [--calib DIR] [--threads 1] [--runs 50]

MODEL is a ``.ckpt``/``.h5`` (exported on the fly to the ``--mcu`` int8 file, the one TFLite Micro
loads; random calibration images unless --calib, which changes no size) or an int8 ``.tflite``.
ST's published STM32 figures for the same resolution are printed beside ours and labelled as theirs
(ST published figures for 192, 224 and 256 only; at other sizes the ST columns are empty).

For a file TFLite Micro (TFLM, the ``mcu`` extra) loads, the arena bytes come from TFLM's own
allocation report (its RecordingMicroAllocator), next to ST's published activation RAM and weights
flash (Cube.AI 10.0, STM32H747) and next to the project's two estimates: the live-set peak (the
least any planner keeping each tensor whole needs) and a mirror of TFLM's greedy memory planner,
which gives TFLM's activation bytes exactly.
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
    parser.add_argument("model", help=".ckpt, .h5 or int8 .tflite, or a model zoo name (ssd_mnv1.zoo.MODEL_ZOO)")
    parser.add_argument("--calib", help="calibration images for the on-the-fly int8 export (default: random)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    run(main)
