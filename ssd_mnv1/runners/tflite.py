"""A TFLite file through LiteRT (ai-edge-litert, or tf.lite), as a runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..fileio import existing_file
from .io import check_int8_input, float_output, identify_outputs, prepare_quantized_input

#: LiteRT kernels: ``xnnpack`` (the CPU default), ``builtin`` (LiteRT's optimized builtin kernels, no
#: delegate) or ``reference`` (TFLite's reference kernels, ``OpResolverType.BUILTIN_REF``: TensorFlow
#: Lite Micro's arithmetic bit for bit, measured; its TILE stops at version 2, so ST's int8 files and
#: our dynamic-batch exports, which tile int8 anchors, run there only as an ``--mcu`` export).
TFLITE_KERNELS = ("xnnpack", "builtin", "reference")


class TFLiteRunner:
    """A TFLite file (float32 or int8 with uint8/int8 input) through ai-edge-litert (or tf.lite).

    ``int8_input``: ``raw`` feeds the uint8 pixels as the STM32 firmware does; ``st`` / ``st25``
    apply ST 2.0's / 2025's host-side conversion (§5) to mimic ST's Python numbers.
    """

    def __init__(self, path: str | os.PathLike, int8_input: str = "raw", num_threads: int | None = None,
                 builtin: bool = False, reference: bool = False):
        check_int8_input(int8_input)
        self.path = Path(path)
        self.int8_input = int8_input
        self.interpreter = make_interpreter(path, num_threads=num_threads, builtin=builtin, reference=reference)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()
        shape = self.input["shape"]
        self.input_size = int(shape[1])
        self.name = "tflite-int8" if self.input["dtype"] in (np.uint8, np.int8) else "tflite-fp32"
        self.class_names = None  # a .tflite does not carry them

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        try:
            return prepare_quantized_input(image, self.input["dtype"], self.input["quantization"], self.int8_input)
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from None

    def __call__(self, images: np.ndarray):
        per_image = []
        for image in images:
            self.interpreter.set_tensor(self.input["index"], self._prepare(image))
            self.interpreter.invoke()
            per_image.append([float_output(self.interpreter.get_tensor(o["index"]), o["quantization"])
                              for o in self.outputs])
        outs = [np.concatenate([p[k] for p in per_image]) for k in range(len(self.outputs))]
        return identify_outputs(outs, self.input_size)


def make_interpreter(path: str | os.PathLike, num_threads: int | None = None, builtin: bool = False,
                     reference: bool = False):
    """A TFLite interpreter from ai-edge-litert (preferred) or tf.lite; ``builtin`` disables XNNPACK,
    ``reference`` runs TFLite's reference kernels (see :data:`TFLITE_KERNELS`)."""
    path = existing_file(path, "TFLite file")
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:
        try:
            import tensorflow as tf  # noqa: F401
        except ImportError:
            raise ValueError(f"{path}: running .tflite files needs ai-edge-litert; "
                             "install the export extra: pip install -e '.[export]'") from None
        litert = tf.lite
        kwargs = {}
    else:
        kwargs = {}
        if reference:
            kwargs["experimental_op_resolver_type"] = litert.OpResolverType.BUILTIN_REF
        elif builtin:
            kwargs["experimental_op_resolver_type"] = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        return litert.Interpreter(model_path=str(path), num_threads=num_threads, **kwargs)
    except (ValueError, RuntimeError) as exc:
        if reference and "Didn't find op" in str(exc):
            raise ValueError(f"{path}: TFLite's reference kernels cannot run this file ({str(exc).splitlines()[0]}); "
                             "ST's int8 files and dynamic-batch exports tile int8 anchors with a TILE version "
                             "that resolver lacks: use --tflite-kernels builtin, or an --mcu export") from None
        raise ValueError(f"{path}: not a valid TFLite model ({exc})") from None
