"""PyTorch -> ONNX: TorchScript exporter, static batch 1, onnxsim, checker, onnxruntime parity.

The TorchScript exporter (``dynamo=False``) is used because it converts correctly through onnx2tf
even in the worst case measured when the toolchain was pinned; onnxsim turns its dynamic pad/reshape
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


def prepare_for_onnx2tf(src: str | os.PathLike, dst: str | os.PathLike, *, check_batch: int = 2,
                        static_batch: bool = False) -> Path:
    """Copy of the ONNX file for onnx2tf: no constant ``anchors`` output, and a dynamic batch.

    onnx2tf drops graph outputs that are constants, so the TFLite stage re-adds the anchors itself
    (as ST's files carry them: int8 constant tiled over the batch + DEQUANTIZE). ST's files have a
    dynamic batch (signature -1; ST's host evaluation resizes the input to 64), so the batch
    dimension is made symbolic here. The TorchScript export bakes batch 1 into every Reshape
    target (``[1, -1, C]``); those become ``[-1, K, C]`` with K static, which onnx2tf turns into
    plain RESHAPEs (a ``Shape``-derived target instead makes it emit dynamic-axis concats that are
    not TFLite builtins). The result is checked with onnxruntime: batch ``check_batch`` must give
    the batch-1 outputs for every item.

    ``static_batch`` (the ``--mcu`` export, for TensorFlow Lite Micro, which has no dynamic shapes)
    keeps the exported batch of 1 everywhere: only the anchors output is removed.
    """
    import onnx
    from onnx import numpy_helper

    m = onnx.shape_inference.infer_shapes(onnx.load(str(src)), strict_mode=True)
    if static_batch:
        _drop_anchors_output(m)
        del m.graph.value_info[:]  # as below: onnx2tf infers the shapes itself
        onnx.checker.check_model(m, full_check=True)
        onnx.save(m, str(dst))
        return Path(dst)
    static = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    for node in m.graph.node:
        if node.op_type != "Reshape":
            continue
        out = static.get(node.output[0])
        if not out or out[0] != 1 or any(d is None for d in out):
            raise ValueError(f"{src}: Reshape '{node.name}' has output shape {out}; expected a static shape "
                             "with batch 1 (export with a fixed input size)")
        target = f"{node.output[0]}__batch_dynamic_shape"
        m.graph.initializer.append(numpy_helper.from_array(np.asarray([-1] + out[1:], np.int64), target))
        node.input[1] = target
    _drop_anchors_output(m)
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "batch"
    del m.graph.value_info[:]
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(dst))
    _check_batch_independent(dst, check_batch)
    return Path(dst)


def _drop_anchors_output(m) -> None:
    keep = [o for o in m.graph.output if o.name != "anchors"]
    del m.graph.output[:]
    m.graph.output.extend(keep)


def _check_batch_independent(path: str | os.PathLike, batch: int) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).uniform(-1, 1, (batch, *inp.shape[1:])).astype(np.float32)
    together = session.run(None, {inp.name: x})
    for i in range(batch):
        alone = session.run(None, {inp.name: x[i:i + 1]})
        for name, a, b in zip([o.name for o in session.get_outputs()], together, alone):
            if a.shape[0] != batch or np.abs(a[i:i + 1] - b).max() > 1e-5:
                raise RuntimeError(f"{path}: output '{name}' at batch {batch} does not equal the batch-1 output "
                                   "(the dynamic-batch rewrite is wrong for this graph)")
