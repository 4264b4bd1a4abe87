"""TensorFlow Lite Micro (TFLM), the runtime of Cortex-M microcontrollers, as a runner.

TFLM's Python build (the ``tflite-micro`` package, the ``mcu`` extra) runs a ``.tflite`` file with
the device runtime's own kernels and arena planner, one image at a time (its tensors have static
shapes). :class:`TFLMRunner` has the interface of :class:`ssd_mnv1.runners.tflite.TFLiteRunner`
(``runner(uint8 NHWC batch) -> (scores, offsets, anchors)``, ``.input_size``, ``.name``, the same
``int8_input`` modes) and adds :meth:`TFLMRunner.arena_report`: the bytes TFLM's
RecordingMicroAllocator reports for the arena, read from TFLM's own report, not estimated.

A file TFLM cannot load raises :class:`TFLMUnsupportedModel` naming the ops TFLM has no kernel
for (ST's files and our dynamic-batch ones: TILE; export with ``--mcu`` for a file TFLM loads).
tflite_micro is imported only when a runner is made.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

from ..fileio import existing_file
from ..hub import resolve_model_file
from ..loading import model_format
from ..tflite_file import parse as parse_tflite
from .io import check_int8_input, float_output, identify_outputs, prepare_quantized_input

#: ``--runtime``: LiteRT (the TFLite interpreter, :mod:`ssd_mnv1.runners.tflite`) or TensorFlow Lite Micro.
RUNTIMES = ("litert", "tflm")

#: Arena given to TFLM when none is asked for; the report says how much of it TFLM used. Retried
#: larger (up to :data:`MAX_ARENA_BYTES`) when TFLM says it is too small.
DEFAULT_ARENA_BYTES = 16 * 2**20
MAX_ARENA_BYTES = 1 * 2**30

_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([^']+)'")
_CUSTOM_OP = re.compile(r"Didn't find op for custom opcode '([^']+)'")
_ARENA_SHORT = re.compile(r"Failed to (?:resize buffer|allocate)|[Aa]rena size is too small|missing:? \d+")
_ALLOC_LINE = re.compile(r"\[RecordingMicroAllocator\] Arena allocation (total|head|tail) (\d+) bytes")
_SECTION_LINE = re.compile(r"\[RecordingMicroAllocator\] '([^']+)' used (\d+) bytes with alignment overhead "
                           r"\(requested (\d+) bytes for (\d+) ")


class TFLMUnsupportedModel(ValueError):
    """TFLM cannot load the file; ``missing_ops`` are the ops it has no kernel for (may be empty
    when the failure is of another kind, whose log is then in the message)."""

    def __init__(self, message: str, missing_ops: tuple[str, ...] = ()):
        super().__init__(message)
        self.missing_ops = missing_ops


def tflm_available() -> bool:
    """Whether tflite-micro (the ``mcu`` extra) is installed."""
    import importlib.util

    try:
        return importlib.util.find_spec("tflite_micro") is not None
    except (ImportError, ValueError):
        return False


def _runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as exc:
        raise ValueError("running a file in TensorFlow Lite Micro needs tflite-micro; install the mcu extra: "
                         f"pip install -e '.[mcu]' ({exc})") from None
    return runtime


@contextlib.contextmanager
def _native_output(sink: list[str]):
    """Capture what C/C++ code writes to file descriptors 1 and 2 (TFLM logs with printf-style
    calls, which Python's sys.stdout redirection does not see) into ``sink``."""
    libc = ctypes.CDLL(None)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    libc.fflush(None)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as f:
        try:
            for fd in (1, 2):
                os.dup2(f.fileno(), fd)
            yield
        finally:
            libc.fflush(None)
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            f.seek(0)
            sink.append(f.read().decode("utf-8", "replace"))


@dataclass
class ArenaReport:
    """TFLM's RecordingMicroAllocator report (bytes).

    ``arena_bytes`` = ``head_bytes`` + ``tail_bytes`` is the arena TFLM used, the smallest
    ``tensor_arena`` that holds this model. The head is the non-persistent part: the activation
    tensors (the graph's input and outputs included) as TFLM's memory planner packed them, and
    the kernels' scratch buffers. The tail is persistent: TFLM's per-tensor and per-node runtime
    structs and the kernels' own data (per-channel requantization multipliers and shifts). Struct
    sizes are those of the machine TFLM runs on: this Python build is 64-bit, so the tail is larger
    than on a 32-bit Cortex-M; the head is the same.
    """

    arena_bytes: int
    head_bytes: int
    tail_bytes: int
    #: section name -> (bytes used with alignment, bytes requested, allocation count)
    sections: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    text: str = ""

    @property
    def used_bytes(self) -> int:
        return self.arena_bytes

    @classmethod
    def parse(cls, text: str) -> "ArenaReport":
        totals = {k: int(v) for k, v in _ALLOC_LINE.findall(text)}
        if set(totals) != {"total", "head", "tail"}:
            raise RuntimeError(f"could not read TFLM's allocation report:\n{text[-2000:]}")
        sections = {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4)))
                    for m in _SECTION_LINE.finditer(text)}
        return cls(totals["total"], totals["head"], totals["tail"], sections, text)


def _missing_ops(log: str) -> tuple[str, ...]:
    found = _MISSING_OP.findall(log) + [f"CUSTOM:{c}" for c in _CUSTOM_OP.findall(log)]
    return tuple(dict.fromkeys(found))


def load_interpreter(model: bytes, arena_size: int | None = None, *, path: str | os.PathLike = "model"):
    """(TFLM interpreter, arena size it got): tensors allocated; :class:`TFLMUnsupportedModel` when
    TFLM cannot load the file, naming the ops it lacks. Without ``arena_size``, the arena grows from
    :data:`DEFAULT_ARENA_BYTES` until the model fits."""
    runtime = _runtime()
    size = DEFAULT_ARENA_BYTES if arena_size is None else int(arena_size)
    while True:
        log: list[str] = []
        try:
            with _native_output(log):
                interpreter = runtime.Interpreter.from_bytes(model, arena_size=size)
            return interpreter, size
        except RuntimeError as exc:
            text = (log[0] if log else "").strip()
            missing = _missing_ops(text)
            if missing:
                hint = (" (the anchors tiled over a dynamic batch, as in ST's files: export with --mcu for a "
                        "static-batch file TFLM loads)" if "TILE" in missing else "")
                raise TFLMUnsupportedModel(f"{path}: TensorFlow Lite Micro cannot load this file: it has no kernel "
                                           f"for op {', '.join(missing)}{hint}", missing) from None
            if arena_size is None and size < MAX_ARENA_BYTES and _ARENA_SHORT.search(text):
                size *= 4
                continue
            raise TFLMUnsupportedModel(f"{path}: TensorFlow Lite Micro cannot load this file ({exc}; arena "
                                       f"{size:,} bytes): {' | '.join(text.splitlines()[-6:])}") from None


class TFLMRunner:
    """A ``.tflite`` file run by TensorFlow Lite Micro, one image at a time.

    ``int8_input`` as for :class:`~ssd_mnv1.runners.tflite.TFLiteRunner`: ``raw`` feeds the uint8 pixels
    (the STM32 firmware), ``st`` / ``st25`` ST's host conversions. ``arena_size``: bytes of the
    tensor arena (default: grown until the model fits; :meth:`arena_report` says what it used).
    """

    def __init__(self, path: str | os.PathLike, int8_input: str = "raw", arena_size: int | None = None):
        check_int8_input(int8_input)
        self.path = existing_file(path, "TFLite file")
        self.int8_input = int8_input
        model = self.path.read_bytes()
        self.flash_bytes = len(model)
        self.interpreter, self.arena_size = load_interpreter(model, arena_size, path=self.path)
        graph = parse_tflite(model, str(self.path)).main
        self.num_outputs = len(graph.outputs)
        self.output_quantization = [graph.tensors[i].quantization.per_tensor or (0.0, 0) for i in graph.outputs]
        detail = self.interpreter.get_input_details(0)
        shape = [int(s) for s in detail["shape"]]
        if len(shape) != 4 or shape[0] != 1:
            raise ValueError(f"{self.path}: input shape {shape}; expected (1, S, S, 3)")
        self.input_shape = shape
        self.input_dtype = np.dtype(detail["dtype"])
        q = detail["quantization_parameters"]
        self.input_quantization = ((float(q["scales"][0]), int(q["zero_points"][0])) if len(q["scales"]) else
                                   (0.0, 0))
        self.input_size = shape[1]
        self.name = "tflm-int8" if self.input_dtype in (np.uint8, np.int8) else "tflm-fp32"

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        try:
            return prepare_quantized_input(image, self.input_dtype, self.input_quantization, self.int8_input)
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from None

    def run_one(self, image: np.ndarray) -> list[np.ndarray]:
        """The file's outputs, in its own order, for one SxSx3 image."""
        self.interpreter.set_input(np.ascontiguousarray(self._prepare(image)), 0)
        self.interpreter.invoke()
        return [float_output(np.asarray(self.interpreter.get_output(i)), self.output_quantization[i])
                for i in range(self.num_outputs)]

    def __call__(self, images: np.ndarray):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:3] != (self.input_size, self.input_size):
            raise ValueError(f"expected images of shape (N, {self.input_size}, {self.input_size}, 3), "
                             f"got {images.shape}")
        per_image = [self.run_one(image) for image in images]
        outs = [np.concatenate([p[k] for p in per_image]) for k in range(self.num_outputs)]
        return identify_outputs(outs, self.input_size)

    def arena_report(self) -> ArenaReport:
        """TFLM's own allocation report for this model (what the arena holds after allocation)."""
        log: list[str] = []
        with _native_output(log):
            self.interpreter.print_allocations()
        return ArenaReport.parse(log[0])


def open_tflm_runner(path: str | os.PathLike, *, int8_input: str = "raw", arena_size: int | None = None) -> TFLMRunner:
    """The runner of ``--runtime tflm``: a ``.tflite`` file in TensorFlow Lite Micro; any other
    model file is refused with one message."""
    path = resolve_model_file(path)  # a model zoo name becomes its downloaded file
    kind = model_format(path)
    if kind != "tflite":
        raise ValueError(f"{path}: --runtime tflm runs .tflite files only (TensorFlow Lite Micro); this is a "
                         f"{kind} file (export it with: python -m ssd_mnv1.export MODEL --to tflite-int8 --mcu ...)")
    return TFLMRunner(path, int8_input=int8_input, arena_size=arena_size)
