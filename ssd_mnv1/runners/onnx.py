"""An ONNX file (our float or QDQ export, ST's sample) through onnxruntime, as a runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..preprocess import normalize
from .io import check_int8_input, identify_outputs, st_host_quantize

#: How onnxruntime runs a QDQ file (:class:`OnnxRunner`): its integer kernels, or the spec's float.
QDQ_ARITHMETIC = ("int8", "float")


def onnx_session(path: str | os.PathLike, num_threads: int | None = None, qdq_arithmetic: str = "int8",
                 optimized_model: str | os.PathLike | None = None):
    """onnxruntime's CPU session of :class:`OnnxRunner` (``optimized_model``: also write the graph it runs)."""
    import onnxruntime as ort

    if qdq_arithmetic not in QDQ_ARITHMETIC:
        raise ValueError(f"qdq_arithmetic must be one of {', '.join(QDQ_ARITHMETIC)}, got {qdq_arithmetic!r}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if num_threads is not None:
        opts.intra_op_num_threads = int(num_threads)
    if optimized_model is not None:
        opts.optimized_model_filepath = str(optimized_model)
    opts.add_session_config_entry("session.x64quantprecision", "1")  # u8 x u8 where u8 x s8 saturates
    # the QDQ -> integer-kernel fusion is a level-2 ("extended") graph transformation
    disabled = ["QDQSelectorActionTransformer"] if qdq_arithmetic == "float" else []
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


class OnnxRunner:
    """An ONNX file through onnxruntime: NCHW (our export, ST's sample) or NHWC input, float in
    [-1, 1] (float export) or uint8 pixels (QDQ export: ``input`` -> DequantizeLinear(1/127.5, 127)).

    ``int8_input`` for a uint8 input, as for TFLite: ``raw`` feeds the pixels (the device's
    path), ``st`` / ``st25`` ST's host conversions (read with the input's own scale/zero point).

    ``qdq_arithmetic`` for a QDQ file: ``int8`` (default) runs onnxruntime's fused integer kernels
    (QLinearConv, ...), integer arithmetic as TFLite's and an NPU's, with
    ``session.x64quantprecision`` set: on x86 CPUs without VNNI, onnxruntime's default sums u8 x s8
    products in saturating int16 pairs (ST's 224 model per channel: ST-AP 52.62 instead of 53.29, a
    property of the host, not of the file); ``float`` runs the ONNX spec's definition, each op in
    float between DequantizeLinear and QuantizeLinear (``bench/int8_runtimes.py`` compares them all).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None, int8_input: str = "raw",
                 qdq_arithmetic: str = "int8"):
        check_int8_input(int8_input)
        self.path = Path(path)
        self.session = onnx_session(path, num_threads, qdq_arithmetic)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.quantized = inp.type == "tensor(uint8)"
        if not self.quantized and inp.type != "tensor(float)":
            raise ValueError(f"{path}: input '{inp.name}' is {inp.type}; expected float (float export) or uint8 (QDQ)")
        self.name = "onnx-qdq" if self.quantized else "onnx"
        self.class_names = None  # an exported graph does not carry them
        self.int8_input = int8_input
        self.input_quantization = _onnx_input_quantization(self.path, inp.name) if self.quantized else None
        shape = inp.shape
        self.nchw = shape[1] == 3
        size = shape[2] if self.nchw else shape[1]
        if not isinstance(size, int):
            raise ValueError(f"{path}: input '{inp.name}' has a dynamic spatial size {shape}; export with a fixed size")
        self.input_size = int(size)
        batch = shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        if not self.quantized:
            x = normalize(images)
        elif self.int8_input == "raw":
            x = images.astype(np.uint8)
        else:
            x = st_host_quantize(images, *self.input_quantization, self.int8_input)
        return x.transpose(0, 3, 1, 2) if self.nchw else x

    def __call__(self, images: np.ndarray):
        x = self._prepare(images)
        if self.fixed_batch is not None and x.shape[0] != self.fixed_batch:
            parts = [self.session.run(None, {self.input_name: x[i:i + 1]}) for i in range(x.shape[0])]
            outs = [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        else:
            outs = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})
        return identify_outputs(outs, self.input_size)


def _onnx_input_quantization(path: Path, input_name: str) -> tuple[float, int]:
    """(scale, zero point) of the DequantizeLinear that reads a QDQ file's uint8 input."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    consts = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] == input_name:
            if node.input[1] in consts and len(node.input) > 2 and node.input[2] in consts:
                return (float(numpy_helper.to_array(consts[node.input[1]])),
                        int(numpy_helper.to_array(consts[node.input[2]])))
    raise ValueError(f"{path}: uint8 input '{input_name}' is not read by a DequantizeLinear with constant "
                     "scale and zero point")
