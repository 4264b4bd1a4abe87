"""Export a checkpoint or .h5 to ONNX / QDQ ONNX / TFLite float32 / TFLite int8 with ST's I/O contract.

    python -m ssd_mnv1.export MODEL --to onnx|onnx-qdq|tflite-fp32|tflite-int8|c [...] --out DIR
                              [--calib DIR] [--per-tensor] [--no-equalize] [--mcu] [--int8-outputs]
                              [--no-memory-plan] [--ledger DATA_DIR]
    python -m ssd_mnv1.export FILE_int8_mcu.tflite --to c --out DIR [--classes NAME ...]

Each target includes the stages it needs (tflite-int8: onnx, tflite-fp32; onnx-qdq: onnx); give
several to get them from one model and calibration. The int8 TFLite has a uint8 input (scale
1/127.5, zero point 127), a dynamic batch, and three float32 outputs (scores, offsets, anchors) in
ST's order; the QDQ ONNX (for ST Edge AI Core / the STM32N6 flow) has the same uint8 input in NCHW,
int8 weights and the same three float outputs. Weights are per-channel unless --per-tensor (the
STM32MP25 NPU); a float model exported per tensor is equalized first (--no-equalize: not).
--mcu writes the TFLite files with a static batch of 1 and the anchors as a plain int8 constant
(RESHAPE + DEQUANTIZE; no SHAPE/STRIDED_SLICE/TILE), for TensorFlow Lite Micro, which has no TILE
kernel: the same network, outputs and quantization, names ending in _mcu (with the mcu extra
installed, the int8 file is loaded and run in TFLM once and its arena size printed). The --mcu files
carry an offline memory plan (TFLM places the activations at its offsets: the live-set peak, 25 %
below TFLM's own planner on ST's models; --no-memory-plan: not).
--int8-outputs: the int8 file outputs its int8 scores and offsets (scale and zero point in the file)
and no anchors, which the host or the C bundle holds (the values of the float file's anchors
output); the same integers as ST's float contract, which stays the default. Name ends _int8out.
--to c (with --mcu) also writes DIR/<stem>_int8_mcu_bundle/: the int8 file as a C array, model_config.h
(input, NA, classes, quantization, TFLM's measured arena + margin), the op resolver, the anchors and
the C post-processor, for a TensorFlow Lite Micro project (docs/deployment.md); an --mcu .tflite MODEL
gets its bundle directly.
--ledger evaluates every produced stage (ST-AP, max |Δ| to the previous stage and to PyTorch float)
and, with an int8 TFLite, every quantized layer (SQNR, ST-AP cost), into DIR/ledger.{json,md,png}.
The dataset is read with the model's class names; a model of several classes also gets each
stage's ST-AP per class.

Any input size the model was built for (multiples of 32 from 128 to 512) and any number of classes
export the same way: the score output is (N, NA, 1+C) at ST's 1/256 scale, NA the anchors of that
size. Check a file against the contract its checkpoint implies with
``python -m ssd_mnv1.export.compat FILE.tflite --expect MODEL``.
"""

from __future__ import annotations

import argparse
import time

from ssd_mnv1.cli import run
from ssd_mnv1.fileio import output_folder
from ssd_mnv1.runners import INT8_INPUT_MODES

from .pipeline import TARGETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_mnv1.export", description=__doc__.split("\n")[0])
    parser.add_argument("model", help=".ckpt (float or QAT) or ST/Keras .h5, or a model zoo name "
                                      "(st_ssd_mobilenet_v1_025_224, ...)")
    parser.add_argument("--to", default=["tflite-int8"], nargs="+", choices=TARGETS, metavar="TARGET",
                        help=f"one or more of {', '.join(TARGETS)} (default tflite-int8)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--classes", nargs="+", metavar="NAME",
                        help="--to c of a .tflite MODEL: class names in label order (default person for one class)")
    parser.add_argument("--calib", help="folder of calibration images (needed for tflite-int8 and onnx-qdq)")
    parser.add_argument("--calib-count", type=int, default=100, help="calibration images to use (default 100)")
    parser.add_argument("--per-tensor", action="store_true", help="per-tensor int8 weights (STM32MP25 NPU)")
    parser.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=None,
                        help="fold dead channels, equalize layers and correct biases before int8 "
                             "(default: on with --per-tensor for a float model, off otherwise)")
    parser.add_argument("--mcu", action="store_true",
                        help="static batch 1 and no batch-dependent op, so that TensorFlow Lite Micro loads the "
                             "TFLite files (ST's files and the default export tile the anchors over a dynamic batch)")
    parser.add_argument("--int8-outputs", action="store_true",
                        help="the int8 file outputs int8 scores and offsets (no anchors output) instead of ST's "
                             "three float32 outputs")
    parser.add_argument("--memory-plan", action=argparse.BooleanOptionalAction, default=True,
                        help="embed an offline TFLM memory plan in the --mcu files (default on)")
    parser.add_argument("--ledger", metavar="DATA_DIR", help="evaluate every stage on this dataset")
    parser.add_argument("--ledger-limit", type=int, help="evaluate only the first N ledger images")
    parser.add_argument("--layer-ledger", action=argparse.BooleanOptionalAction, default=True,
                        help="with --ledger and an int8 TFLite: SQNR and ST-AP cost of every quantized layer "
                             "(one evaluation per layer; default on)")
    parser.add_argument("--int8-input", default="raw", choices=INT8_INPUT_MODES,
                        help="ledger: how images reach the uint8 input (default raw pixels, as on the device)")
    args = parser.parse_args(argv)
    output_folder(args.out, "--out")  # before the model loads: a bad folder fails now, not after the export
    if str(args.model).lower().endswith(".tflite"):
        if args.to != ["c"]:
            raise ValueError(f"{args.model}: a .tflite MODEL takes --to c only (its C bundle); the other targets "
                             "start from a .ckpt or .h5")
        from .c_bundle import write_c_bundle

        write_c_bundle(args.model, args.out, args.classes)
        return 0
    if args.classes:
        raise ValueError("--classes names the classes of a .tflite MODEL; a .ckpt or .h5 stores its own")

    from .ledger import build_ledger, ledger_markdown, write_ledger
    from .pipeline import export
    from .tf_stage import quiet_tensorflow

    quiet_tensorflow()
    t0 = time.perf_counter()
    result = export(args.model, args.out, tuple(args.to), calib=args.calib, calib_count=args.calib_count,
                    per_tensor=args.per_tensor, equalize=args.equalize, mcu=args.mcu,
                    int8_outputs=args.int8_outputs, memory_plan=args.memory_plan)
    print(f"export chain done in {time.perf_counter() - t0:.1f} s")
    if args.ledger:
        ledger = build_ledger(args.model, result, args.ledger, limit=args.ledger_limit, int8_input=args.int8_input)
        if args.layer_ledger and "tflite-int8" in result.files:
            from ssd_mnv1.quantization.calibration import calibration_images, int8_simulation

            from .layer_ledger import build_layer_ledger

            # Costs need the true float model as their baseline: the fake-quant model the int8 file
            # was converted from (QAT or calibrated), but for an equalized export the equalized one
            # before bias correction (which corrects all layers jointly: with one layer quantized, it
            # would offset the others).
            source = result.models.get("pytorch-equalized")
            model = (result.models["pytorch-fake-quant"] if source is None else
                     int8_simulation(source, calibration_images(args.calib, source.input_size, args.calib_count),
                                     args.per_tensor))
            layers = build_layer_ledger(model, result.files["tflite-int8"], result.files["tflite-fp32"],
                                        args.ledger, limit=args.ledger_limit)
            ledger["layers"] = {**layers, "model": str(args.model)}
        paths = write_ledger(ledger, args.out)
        print(ledger_markdown(ledger))
        print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    run(main)
