"""The one runner factory: any model file the project handles (``.ckpt``, ``.h5``, ``.onnx``, ``.tflite``).

The heavy back-ends (onnxruntime, the TFLite interpreter, TFLM, tf_keras) are imported only when such a
file is opened, so ``import ssd_mnv1`` stays free of TensorFlow.
"""

from __future__ import annotations

import os

from ..hub import resolve_model_file
from ..loading import load_model, model_format
from .io import Runner
from .keras import KerasRunner
from .onnx import OnnxRunner
from .pytorch import TorchRunner
from .tflite import TFLITE_KERNELS, TFLiteRunner
from .tflm import RUNTIMES, open_tflm_runner


def open_runner(path: str | os.PathLike, *, int8_input: str = "raw", h5_backend: str = "pytorch",
                device: str = "cpu", num_threads: int | None = None, tflite_kernels: str = "xnnpack",
                runtime: str = "litert", fold_batchnorm: bool = False, qdq_arithmetic: str = "int8") -> Runner:
    """The one runner factory: any model file the project accepts (:data:`ssd_mnv1.loading.MODEL_SUFFIXES`),
    or a model zoo name (``st_ssd_mobilenet_v1_025_224_int8``: :func:`ssd_mnv1.hub.resolve_model_file`).

    ``tflite_kernels``: see :data:`TFLITE_KERNELS` (they differ by about 1 LSB); ``qdq_arithmetic``
    (an ``.onnx``): see :data:`QDQ_ARITHMETIC` and :class:`OnnxRunner`. ``runtime``:
    ``litert`` or ``tflm`` (TensorFlow Lite Micro, the ``mcu`` extra; a ``.tflite`` exported with ``--mcu``).
    ``fold_batchnorm``: a PyTorch model (``.ckpt``, ``.h5``) runs with its BatchNorms folded into
    its convs (:class:`TorchRunner`); ``ssd_mnv1.evaluate`` asks for it, as :data:`EVAL_TORCH_OPTIONS`.
    """
    if tflite_kernels not in TFLITE_KERNELS:
        raise ValueError(f"--tflite-kernels must be one of {', '.join(TFLITE_KERNELS)}, got {tflite_kernels!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    path = resolve_model_file(path)  # a model zoo name becomes its downloaded file
    if runtime == "tflm":
        return open_tflm_runner(path, int8_input=int8_input)
    kind = model_format(path)
    if kind == "keras" and h5_backend == "keras":
        return KerasRunner(path)
    if kind in ("checkpoint", "keras"):
        return TorchRunner(load_model(path), "pytorch" if kind == "checkpoint" else "pytorch (.h5 import)", device,
                           fold_batchnorm=fold_batchnorm)
    if kind == "onnx":
        try:
            return OnnxRunner(path, num_threads=num_threads, int8_input=int8_input, qdq_arithmetic=qdq_arithmetic)
        except ImportError:
            raise ValueError(f"{path}: running .onnx files needs onnxruntime; "
                             "install the export extra: pip install -e '.[export]'") from None
    return TFLiteRunner(path, int8_input=int8_input, num_threads=num_threads,
                        builtin=tflite_kernels == "builtin", reference=tflite_kernels == "reference")
