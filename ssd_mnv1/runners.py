"""One interface over every model file the project handles: ``.ckpt``, ``.h5``, ``.onnx``, ``.tflite``.

A runner takes a batch of images already stretched to SxS (uint8 NHWC, as ST's evaluation and the
device see them) and returns ST's three float outputs ``(scores, offsets, anchors)`` as numpy arrays.
Its ``class_names`` are the model's own (a PyTorch model stores them) or ``None`` where the file
does not carry them (ONNX, TFLite, TFLM, Keras): :func:`model_class_names` then takes them from
the user (``--classes``) or, for ST's one-class layout, defaults to ``person``.
The heavy back-ends (onnxruntime, the TFLite interpreter, tf_keras) are imported only when such a
file is opened, so ``import ssd_mnv1`` stays free of TensorFlow.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .anchors import generate_anchors
from .backbone import ConvBN
from .loading import load_model, model_format
from .preprocess import normalize

#: uint8 input of an int8 TFLite file: ``raw`` pixels (the STM32 firmware), ``st`` = ST 2.0's host
#: conversion (the code behind the 2.0 card), ``st25`` = the 2025 code's truncating conversion.
INT8_INPUT_MODES = ("raw", "st", "st25")
#: LiteRT kernels: ``xnnpack`` (the CPU default), ``builtin`` (LiteRT's optimized builtin kernels, no
#: delegate) or ``reference`` (TFLite's reference kernels, ``OpResolverType.BUILTIN_REF``: TensorFlow
#: Lite Micro's arithmetic bit for bit, measured; its TILE stops at version 2, so ST's int8 files and
#: our dynamic-batch exports, which tile int8 anchors, run there only as an ``--mcu`` export).
TFLITE_KERNELS = ("xnnpack", "builtin", "reference")


#: How ``ssd_mnv1.evaluate`` runs a PyTorch model (:class:`TorchRunner` options). BatchNorms folded
#: into the convs: ~25% less CPU forward time, outputs within ~1.5e-6 of the unfolded model's. On the
#: 690 COCO-person val images ST's 224 and 256 .h5 files score the same ST-AP 2.0 / 2025 and COCO
#: figures to 4 decimals; the 192 one the same except ST-AP 2025, 43.2676 instead of 43.2677.
EVAL_TORCH_OPTIONS = {"fold_batchnorm": True}


class Runner(Protocol):
    name: str
    input_size: int
    class_names: tuple[str, ...] | None

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class TorchRunner:
    """A PyTorch detector (from a checkpoint or through our Keras importer).

    The uint8 NHWC batch is normalized as TF does (:func:`normalize`) and only permuted to NCHW, so
    it stays NHWC in memory: PyTorch's CPU convolutions take that as channels-last, their fast path
    for this network (a contiguous NCHW copy is ~1.6x slower). On an accelerator the uint8 pixels
    travel (4x less than float) and are normalized there through a 256-entry table of the same
    float32 values (a division on the device may round differently).

    Options, off by default because the outputs then differ from the model's own (by ~1e-6 for
    ``fold_batchnorm``; ST-AP on the 690 COCO-person images moves by 0.0001 at most, see
    :data:`EVAL_TORCH_OPTIONS`):
    ``fold_batchnorm`` runs a copy of the model, made now, with each float BatchNorm folded into
    its conv (one pass less over every activation: ~25% less forward time on a CPU; evaluation
    turns it on, see :func:`open_runner`);
    ``channels_last`` puts the weights in that format too (for GPUs); ``autocast``: a dtype such as
    ``torch.bfloat16`` to run the model in (mixed precision). Outputs are float32 numpy arrays.
    """

    def __init__(self, model: torch.nn.Module, name: str = "pytorch", device: str = "cpu", *,
                 fold_batchnorm: bool = False, channels_last: bool = False, autocast: torch.dtype | None = None):
        self.model = model.eval().to(device)
        self._net = _fold_batchnorm(self.model) if fold_batchnorm else self.model
        if channels_last:
            self._net = self._net.to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        self.name = name
        self.input_size = model.input_size
        names = getattr(model, "class_names", None)
        self.class_names = tuple(names) if names is not None else None
        self.autocast = autocast
        self._table = None if self.device.type == "cpu" else \
            torch.from_numpy(normalize(np.arange(256, dtype=np.uint8))).to(self.device)

    @torch.no_grad()  # not inference_mode: fake-quant observers may keep tensors made here
    def __call__(self, images: np.ndarray):
        images = np.asarray(images)
        if self._table is not None and images.dtype == np.uint8:
            x = self._table[torch.from_numpy(np.ascontiguousarray(images)).to(self.device).long()]
        else:  # on the CPU, or float pixels (a bilinear resize)
            x = torch.from_numpy(normalize(images)).to(self.device)
        x = x.permute(0, 3, 1, 2)
        if self.autocast is None:
            outputs = self._net(x)
        else:
            with torch.autocast(self.device.type, dtype=self.autocast):
                outputs = self._net(x)
        return tuple(t.float().cpu().numpy() for t in outputs)


@torch.no_grad()
def _fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (eval mode) whose float :class:`ConvBN` layers have their BatchNorm folded
    into the conv (:meth:`ConvBN.folded_weight_and_bias`); fake-quantized layers, which fold
    their own, are left alone. The model itself when there is nothing to fold."""
    if not any(isinstance(m, ConvBN) and m.weight_quant is None for m in model.modules()):
        return model
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, ConvBN) and m.weight_quant is None:
            weight, bias = m.folded_weight_and_bias()
            c = m.conv
            conv = torch.nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                                   c.groups, bias=True, padding_mode=c.padding_mode, device=weight.device,
                                   dtype=weight.dtype)
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
            m.conv, m.bn = conv, torch.nn.Identity()
    return model


def _identify_outputs(outputs: list[np.ndarray], input_size: int) -> tuple[np.ndarray, ...]:
    """Order (scores, offsets, anchors) by shape and content, never by tensor name.

    Converters reorder outputs (onnx2tf, TFLite); scores are the only non-4-wide output for
    multi-class models and the only softmax rows otherwise, and anchors match ST's constants
    (within int8 rounding).
    """
    if len(outputs) != 3:
        raise ValueError(f"expected 3 outputs (scores, offsets, anchors), the model has {len(outputs)}")
    ref = generate_anchors(input_size).numpy()
    anchors_i = min(range(3), key=lambda i: np.inf if outputs[i].shape[-1] != 4
                    else float(np.abs(outputs[i][0] - ref).max()) if outputs[i].shape[1:] == ref.shape else np.inf)
    if outputs[anchors_i].shape[1:] != ref.shape or np.abs(outputs[anchors_i][0] - ref).max() > 0.01:
        raise ValueError(f"no output matches the {input_size} model's anchors {ref.shape}; "
                         f"output shapes are {[o.shape for o in outputs]}")
    rest = [i for i in range(3) if i != anchors_i]
    softmaxness = [float(np.abs(outputs[i].sum(-1) - 1).mean()) for i in rest]
    scores_i = rest[int(np.argmin(softmaxness))]
    offsets_i = [i for i in rest if i != scores_i][0]
    return outputs[scores_i], outputs[offsets_i], outputs[anchors_i]


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
        if int8_input not in INT8_INPUT_MODES:
            raise ValueError(f"--int8-input must be one of {', '.join(INT8_INPUT_MODES)}, got {int8_input!r}")
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
        return _identify_outputs(outs, self.input_size)


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


def st_host_quantize(images: np.ndarray, scale: float, zero_point: int, mode: str = "st") -> np.ndarray:
    """ST's host-side uint8 conversion of the normalized image (st_reference §5, §7.2).

    ``st`` (2.0): x = p * float32(1/127.5) - 1 in float32 (``tf.cast(image, float32) * scale +
    offset``), then q = round(x / scale + zp): float noise makes 192 of the 256 pixel values map to
    q = p and the rest to p - 1. ``st25`` (2025): q = uint8-cast(x / scale + zp), a truncation, so
    q = p - 1 for p >= 1 and 0 for p = 0. The device instead gets the raw pixels.
    """
    if mode not in ("st", "st25"):
        raise ValueError(f"unknown host conversion {mode!r}; expected 'st' or 'st25'")
    x = images.astype(np.float32) * np.float32(1.0 / 127.5) - np.float32(1.0)
    v = x / float(scale) + float(zero_point)  # float32 array / Python float stays float32, as in ST
    if mode == "st":
        v = np.round(v)
    return np.clip(np.trunc(v), 0, 255).astype(np.uint8)


class TFLiteRunner:
    """A TFLite file (float32 or int8 with uint8/int8 input) through ai-edge-litert (or tf.lite).

    ``int8_input``: ``raw`` feeds the uint8 pixels as the STM32 firmware does; ``st`` / ``st25``
    apply ST 2.0's / 2025's host-side conversion (§5) to mimic ST's Python numbers.
    """

    def __init__(self, path: str | os.PathLike, int8_input: str = "raw", num_threads: int | None = None,
                 builtin: bool = False, reference: bool = False):
        if int8_input not in INT8_INPUT_MODES:
            raise ValueError(f"--int8-input must be one of {', '.join(INT8_INPUT_MODES)}, got {int8_input!r}")
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
        dtype = self.input["dtype"]
        scale, zp = self.input["quantization"]
        if dtype == np.float32:
            return normalize(image[None])
        if dtype == np.uint8:
            if self.int8_input == "raw":
                return image[None].astype(np.uint8)
            return st_host_quantize(image[None], scale, zp, self.int8_input)
        if dtype == np.int8:  # int8 input: same real value as uint8 with zp shifted by 128
            q = image[None].astype(np.int16) if self.int8_input == "raw" else \
                st_host_quantize(image[None], scale, zp + 128, self.int8_input).astype(np.int16)
            return (q - 128).astype(np.int8)
        raise ValueError(f"{self.path}: unsupported input dtype {dtype}")

    def __call__(self, images: np.ndarray):
        per_image = []
        for image in images:
            self.interpreter.set_tensor(self.input["index"], self._prepare(image))
            self.interpreter.invoke()
            per_image.append([self.interpreter.get_tensor(o["index"]).astype(np.float32) for o in self.outputs])
        outs = [np.concatenate([p[k] for p in per_image]) for k in range(len(self.outputs))]
        return _identify_outputs(outs, self.input_size)


def make_interpreter(path: str | os.PathLike, num_threads: int | None = None, builtin: bool = False,
                     reference: bool = False):
    """A TFLite interpreter from ai-edge-litert (preferred) or tf.lite; ``builtin`` disables XNNPACK,
    ``reference`` runs TFLite's reference kernels (see :data:`TFLITE_KERNELS`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such TFLite file")
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


class KerasRunner:
    """ST's own Keras model through tf_keras (reference runs only; needs the export extra)."""

    def __init__(self, path: str | os.PathLike):
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tf_keras

        self.model = tf_keras.models.load_model(str(path), compile=False)
        self.input_size = int(self.model.input_shape[1])
        self.name = "keras"
        self.class_names = None

    def __call__(self, images: np.ndarray):
        outs = self.model(normalize(images), training=False)
        return _identify_outputs([np.asarray(o) for o in outs], self.input_size)


def open_runner(path: str | os.PathLike, *, int8_input: str = "raw", h5_backend: str = "pytorch",
                device: str = "cpu", num_threads: int | None = None, tflite_kernels: str = "xnnpack",
                runtime: str = "litert", fold_batchnorm: bool = False, qdq_arithmetic: str = "int8") -> Runner:
    """The one runner factory: any model file the project accepts (:data:`ssd_mnv1.loading.MODEL_SUFFIXES`).

    ``tflite_kernels``: see :data:`TFLITE_KERNELS` (they differ by about 1 LSB); ``qdq_arithmetic``
    (an ``.onnx``): see :data:`QDQ_ARITHMETIC` and :class:`OnnxRunner`. ``runtime``:
    ``litert`` or ``tflm`` (TensorFlow Lite Micro, the ``mcu`` extra; a ``.tflite`` exported with ``--mcu``).
    ``fold_batchnorm``: a PyTorch model (``.ckpt``, ``.h5``) runs with its BatchNorms folded into
    its convs (:class:`TorchRunner`); ``ssd_mnv1.evaluate`` asks for it, as :data:`EVAL_TORCH_OPTIONS`.
    """
    if tflite_kernels not in TFLITE_KERNELS:
        raise ValueError(f"--tflite-kernels must be one of {', '.join(TFLITE_KERNELS)}, got {tflite_kernels!r}")
    if runtime not in ("litert", "tflm"):
        raise ValueError(f"--runtime must be litert or tflm, got {runtime!r}")
    if runtime == "tflm":
        from .tflm import open_tflm_runner  # lazy: tflm imports this module

        return open_tflm_runner(path, int8_input=int8_input)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
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


def score_columns(runner) -> int:
    """Width of the runner's scores output (background + one column per class): a PyTorch
    model says it, any other file answers one blank image."""
    model = getattr(runner, "model", None)
    if isinstance(model, torch.nn.Module) and hasattr(model, "num_classes"):
        return int(model.num_classes) + 1
    size = runner.input_size
    return int(runner(np.zeros((1, size, size, 3), np.uint8))[0].shape[-1])


def model_class_names(runner, classes=None, path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The class names (label 1, 2, ... in order) to evaluate or draw ``runner``'s detections with.

    The model's stored names win (a checkpoint, an ``.h5`` run in PyTorch); ``classes`` (the
    ``--classes`` option) must then equal them. A file without names (``.onnx``, ``.tflite``)
    takes ``classes``, whose count must fit its score columns, or is ``person`` when it has ST's
    two columns (background, person). Every mismatch is one ValueError naming the file and both sides.
    """
    where = path if path is not None else runner.name
    given = None if classes is None else tuple(str(c) for c in classes)
    if given is not None:
        if not given:
            raise ValueError("--classes is empty: give at least one class name")
        if len(set(given)) != len(given):
            raise ValueError(f"--classes has duplicates: {list(given)}")
    stored = getattr(runner, "class_names", None)
    if stored is not None:
        stored = tuple(stored)
        if given is not None and given != stored:
            raise ValueError(f"--classes {list(given)} differs from the classes stored in {where}, "
                             f"{list(stored)}: drop --classes or give exactly those names, in that order")
        return stored
    columns = score_columns(runner)
    if given is None:
        if columns == 2:
            return ("person",)
        raise ValueError(f"{where} has {columns} score columns (background + {columns - 1} classes) and does "
                         f"not store class names: pass --classes with its {columns - 1} names, in label order")
    if columns != 1 + len(given):
        raise ValueError(f"{where} has {columns} score columns (background + {columns - 1} classes) but "
                         f"--classes gives {len(given)} name(s) {list(given)}: give {columns - 1}")
    return given
