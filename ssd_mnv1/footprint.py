"""Footprint of a detector: parameters, MACs, int8 TFLite size, peak activation memory, CPU latency.

    python -m ssd_mnv1.footprint MODEL [--calib DIR] [--threads 1] [--runs 50]

MODEL is a ``.ckpt``/``.h5`` (exported to int8 on the fly; random calibration images unless
--calib, which changes no size) or an int8 ``.tflite``. ST's published STM32 figures for the same
resolution are printed beside ours and labelled as theirs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .cli import run
from .specs import SUPPORTED_ALPHAS, scaled_channels
from .zoo import st_release


def count_macs(model: torch.nn.Module, size: int) -> int:
    """Multiply-accumulates of one inference (convolutions; everything else is negligible)."""
    total = 0

    def hook(module, _inp, out):
        nonlocal total
        kh, kw = module.kernel_size
        total += out.numel() * kh * kw * module.in_channels // module.groups

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return total


def _read_tflite(tflite_path):
    """(flatbuffer model, its main subgraph, the TFLite schema module)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(tflite_path))
    return model, model.subgraphs[0], schema


def _conv_ops(model, sg, schema) -> list:
    """The CONV_2D / DEPTHWISE_CONV_2D operators, in execution order."""
    convs = (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D)
    ops = []
    for op in sg.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) in convs:
            ops.append(op)
    return ops


def tflite_architecture(tflite_path) -> dict:
    """``build_model`` arguments of the detector in a .tflite, read from the file itself.

    The MAC count is taken on the PyTorch model with these arguments, so they must be the file's:
    the width from the first convolution's output channels (``int(32 * alpha)``), the classes from
    the score output's width (background + classes; the two box outputs are 4 wide, so when all
    three outputs are 4 wide the scores are too), the resolution from the input.
    """
    if not Path(tflite_path).is_file():
        raise FileNotFoundError(f"{tflite_path}: no such TFLite file")
    model, sg, schema = _read_tflite(tflite_path)
    convs = _conv_ops(model, sg, schema)
    if not convs:
        raise ValueError(f"{tflite_path}: no convolution in the file; not an SSD MobileNet v1 detector")
    stem = int(sg.tensors[convs[0].inputs[1]].shape[0])
    alphas = [a for a in SUPPORTED_ALPHAS if scaled_channels(32, a) == stem]
    if not alphas:
        raise ValueError(f"{tflite_path}: the first convolution has {stem} output channels, which no "
                         f"MobileNet width gives (alpha {', '.join(map(str, SUPPORTED_ALPHAS))} -> "
                         f"{', '.join(str(scaled_channels(32, a)) for a in SUPPORTED_ALPHAS)} channels)")
    widths = [int(sg.tensors[i].shape[-1]) for i in sg.outputs]
    if len(widths) != 3:
        raise ValueError(f"{tflite_path}: {len(widths)} outputs; an SSD detector has 3 (scores, offsets, anchors)")
    scores = [w for w in widths if w != 4] or [4]
    return {"alpha": alphas[0], "input_size": int(sg.tensors[sg.inputs[0]].shape[1]),
            "num_classes": scores[0] - 1}


def peak_activation_bytes(tflite_path) -> int:
    """Peak of the bytes of live activation tensors, executing the ops in order.

    A tensor lives from the op that writes it to the last op that reads it (graph inputs from the
    start, outputs to the end); constants are excluded. No in-place reuse is assumed, so this is
    an upper-bound style estimate comparable to, not equal to, a deployment tool's arena size.
    """
    model, sg, schema = _read_tflite(tflite_path)
    size_of = {schema.TensorType.INT8: 1, schema.TensorType.UINT8: 1, schema.TensorType.INT16: 2,
               schema.TensorType.INT32: 4, schema.TensorType.FLOAT32: 4, schema.TensorType.INT64: 8,
               schema.TensorType.FLOAT16: 2}

    def is_const(i):
        buf = model.buffers[sg.tensors[i].buffer]
        return buf.data is not None and len(buf.data) > 0

    n_ops = len(sg.operators)
    first, last = {}, {}
    for i in sg.inputs:
        first[i] = 0
    for step, op in enumerate(sg.operators):
        for i in op.outputs:
            if i >= 0:
                first.setdefault(i, step)
        for i in op.inputs:
            if i >= 0 and not is_const(i):
                last[i] = step
    for i in sg.outputs:
        last[i] = n_ops
    nbytes = {i: int(np.prod(sg.tensors[i].shape)) * size_of.get(sg.tensors[i].type, 4) for i in first}
    peak = 0
    for step in range(n_ops):
        live = sum(b for i, b in nbytes.items() if first[i] <= step <= last.get(i, first[i]))
        peak = max(peak, live)
    return peak


def tflite_params(tflite_path) -> int:
    """Weights and biases of the CONV_2D / DEPTHWISE_CONV_2D ops (anchors and shapes excluded)."""
    model, sg, schema = _read_tflite(tflite_path)
    seen = {i for op in _conv_ops(model, sg, schema) for i in op.inputs[1:] if i >= 0}
    return sum(int(np.prod(sg.tensors[i].shape)) for i in seen)


def latency_ms(tflite_path, threads: int, runs: int) -> float:
    from .runners import make_interpreter

    it = make_interpreter(tflite_path, num_threads=threads)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    x = np.random.default_rng(0).integers(0, 256, inp["shape"], dtype=np.uint8).astype(inp["dtype"])
    it.set_tensor(inp["index"], x)
    it.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.set_tensor(inp["index"], x)
        it.invoke()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_mnv1.footprint", description=__doc__.split("\n")[0])
    parser.add_argument("model", help=".ckpt, .h5 or int8 .tflite")
    parser.add_argument("--calib", help="calibration images for the on-the-fly int8 export (default: random)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)

    from .export.pipeline import export, models_for_export
    from .export.tf_stage import quiet_tensorflow
    from .loading import model_format

    quiet_tensorflow()
    path = Path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        if model_format(path) == "tflite":
            tflite = path
            from .model import build_model

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
            tflite = export(path, Path(tmp) / "export", "tflite-int8", calib=calib, log=lambda *_: None).files["tflite-int8"]
            params = sum(p.numel() for p in model.parameters())
            note = "trainable PyTorch parameters, BN not folded"
        macs = count_macs(model, size)
        peak = peak_activation_bytes(tflite)
        ms = latency_ms(tflite, args.threads, args.runs)
        print(f"## Footprint of {path.name} ({size}x{size})\n")
        print("| quantity | ours |\n|---|---|")
        print(f"| parameters | {params:,} ({note}) |")
        print(f"| MACs per inference | {macs / 1e6:.1f} M |")
        print(f"| int8 TFLite size | {tflite.stat().st_size / 1024:.1f} KiB |")
        print(f"| peak activation memory, int8 graph (estimate) | {peak / 1024:.1f} KiB |")
        print(f"| CPU latency, TFLite interpreter, {args.threads} thread(s), this machine | {ms:.2f} ms (median of {args.runs}) |")
        print(f"\n### ST's published figures for their {size} model (theirs, on STM32, not measured here)\n")
        print("| quantity | ST |\n|---|---|")
        for key, value in st_release(size).stm32.items():
            print(f"| {key} | {value} |")
    return 0


if __name__ == "__main__":
    run(main)
