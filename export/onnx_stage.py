"""PyTorch -> ONNX: TorchScript exporter, static batch 1, onnxsim, checker, onnxruntime parity.

The TorchScript exporter (``dynamo=False``) is used because it converts correctly through onnx2tf
even in the worst case measured (toolchain.md §5.6); onnxsim turns its dynamic pad/reshape
subgraphs into static ones so that onnx2tf sees plain Conv/Pad/Resize/Reshape/Softmax.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ssd_mnv1.fileio import atomic_path

OUTPUT_NAMES = ("scores", "offsets", "anchors")
INPUT_NAME = "input"


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, opset: int = 13) -> Path:
    """Write ``model`` (float, eval) as a simplified, checked ONNX file: NCHW float input in [-1, 1]."""
    import onnx
    import onnxsim

    model = model.eval().cpu()
    size = model.input_size
    example = torch.zeros(1, 3, size, size)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(tmp), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          opset_version=opset, dynamo=False, do_constant_folding=True)
        simplified, ok = onnxsim.simplify(onnx.load(str(tmp)))
        if not ok:
            raise RuntimeError("onnxsim could not validate the simplified ONNX model")
        onnx.checker.check_model(simplified, full_check=True)
        onnx.save(simplified, str(tmp))
    return Path(path)


def onnx_parity(path: str | os.PathLike, model: torch.nn.Module, images_nchw: np.ndarray) -> dict[str, float]:
    """Max |difference| per output between onnxruntime and PyTorch on the same inputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    diffs = {name: 0.0 for name in OUTPUT_NAMES}
    with torch.no_grad():
        for x in images_nchw:
            ort_out = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x[None].astype(np.float32)})
            pt_out = [t.numpy() for t in model.eval()(torch.from_numpy(x[None]).float())]
            for name, a, b in zip(OUTPUT_NAMES, ort_out, pt_out):
                diffs[name] = max(diffs[name], float(np.abs(a - b).max()))
    return diffs


def strip_constant_outputs(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy of the ONNX file without the constant ``anchors`` output.

    onnx2tf drops graph outputs that are constants, so the TFLite stage re-adds the anchors itself
    (as ST's files carry them: int8 constant + DEQUANTIZE).
    """
    import onnx

    m = onnx.load(str(src))
    keep = [o for o in m.graph.output if o.name != "anchors"]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    onnx.save(m, str(dst))
    return Path(dst)
