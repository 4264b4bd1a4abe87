"""Every model file the project handles, run the same way: :func:`open_runner` returns a runner
that takes uint8 NHWC images stretched to SxS and returns ST's three float outputs.

One module per back-end (``pytorch``, ``onnx``, ``tflite``, ``tflm``, ``keras``); ``io`` holds what
they share (the int8 input conventions, output identification); ``classes`` the class-name policy;
``factory`` picks the back-end from the file. Heavy back-ends are imported only when a file is opened.
"""

from .classes import model_class_names, score_columns
from .factory import open_runner
from .io import INT8_INPUT_MODES, Runner, identify_outputs, prepare_quantized_input, st_host_quantize
from .keras import KerasRunner
from .onnx import QDQ_ARITHMETIC, OnnxRunner, onnx_session
from .pytorch import EVAL_TORCH_OPTIONS, TorchRunner
from .tflite import TFLITE_KERNELS, TFLiteRunner, make_interpreter
from .tflm import RUNTIMES, ArenaReport, TFLMRunner, TFLMUnsupportedModel, open_tflm_runner, tflm_available

__all__ = [
    "ArenaReport", "EVAL_TORCH_OPTIONS", "INT8_INPUT_MODES", "KerasRunner", "OnnxRunner", "QDQ_ARITHMETIC",
    "RUNTIMES", "Runner", "TFLITE_KERNELS", "TFLMRunner", "TFLMUnsupportedModel", "TFLiteRunner", "TorchRunner",
    "identify_outputs", "make_interpreter", "model_class_names", "onnx_session", "open_runner", "open_tflm_runner",
    "prepare_quantized_input", "score_columns", "st_host_quantize", "tflm_available",
]
