"""The one reader of TFLite files: the flatbuffer parsed once, its operators by name, its tensors
with shape, dtype and quantization, which of them are constants, each graph's inputs and outputs,
and the bytes of every buffer.

Why one reader: the footprint estimates, the contract check, the exporter's output edits, the
QDQ audit, the per-layer ledger, the TensorFlow Lite Micro runner and the benches all read these
files, and must agree on what they hold (which operator an operator code names, which tensor is a
constant, what a tensor's quantization is). Running a file stays with the runners
(:mod:`ssd_mnv1.runners`): this module never executes a graph.

``import ssd_mnv1`` never imports TensorFlow, so the flatbuffer bindings are imported on first use,
from the first installed of :data:`SCHEMA_MODULES`: LiteRT's (the ``export`` extra, no
TensorFlow), TFLite Micro's (the ``mcu`` extra, no TensorFlow), TensorFlow's. All three are
generated from the same schema (the first two add fields no file of the project sets): they read
the same views and write the same bytes (the project's exports back byte for byte).

:func:`read` / :func:`parse` give a :class:`TFLiteFile`: read-only views (:class:`Graph`,
:class:`Tensor`, :class:`Operator`, :class:`Quantization`) of the file as read, and
:attr:`TFLiteFile.flatbuffer`, the schema's object tree, for code that edits a file and writes it
back with :func:`to_bytes` (the views do not follow such edits).
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .fileio import existing_file

#: The flatbuffer bindings, in order of preference (the first importable one is used).
SCHEMA_MODULES = (
    "ai_edge_litert.schema_py_generated",
    "tflite_micro.tensorflow.lite.micro.python.schema_py_generated",
    "tensorflow.lite.python.schema_py_generated",
)

#: TFLite tensor types with a numpy equivalent (the others, e.g. STRING, RESOURCE, INT4: ``dtype`` None).
_NUMPY_TYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64, "INT8": np.int8, "UINT8": np.uint8,
    "INT16": np.int16, "UINT16": np.uint16, "INT32": np.int32, "UINT32": np.uint32, "INT64": np.int64,
    "UINT64": np.uint64, "BOOL": np.bool_, "COMPLEX64": np.complex64, "COMPLEX128": np.complex128,
}

#: Bytes counted per element of a tensor whose type has no numpy equivalent (a handle's size).
OTHER_TYPE_BYTES = 4


@functools.cache
def schema() -> ModuleType:
    """The flatbuffer bindings (``schema_py_generated``): the first of :data:`SCHEMA_MODULES` installed."""
    for name in SCHEMA_MODULES:
        try:
            if name.startswith("tensorflow."):  # TF's lazy API hides it from a plain import
                from tensorflow.lite.python import schema_py_generated

                return schema_py_generated
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("reading .tflite files needs ai-edge-litert, tflite-micro or tensorflow: "
                      "pip install -e '.[export]' (or '.[mcu]')")


@functools.cache
def _builtin_names() -> dict[int, str]:
    return {v: k for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}


@functools.cache
def _type_names() -> dict[int, str]:
    return {v: k for k, v in vars(schema().TensorType).items() if not k.startswith("_")}


def builtin_code(opcode: Any) -> int:
    """The builtin operator an operator code (``OperatorCodeT``) stands for.

    Schema 3a moved the code from a byte (now ``deprecatedBuiltinCode``) to the int32
    ``builtinCode``: older files hold it in the byte only (``builtinCode`` then reads 0, ADD), newer
    ones in both, the byte capped at 127 (``PLACEHOLDER_FOR_GREATER_OP_CODES``) for codes above it.
    Either way the larger of the two is the operator."""
    return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)


def opcode_name(opcode: Any) -> str:
    """An operator code's name: the builtin's (``CONV_2D``), or ``CUSTOM:<code>`` for a custom or
    Flex op (``CUSTOM:?`` when it has no code); an unknown builtin by its number."""
    code = builtin_code(opcode)
    if code == schema().BuiltinOperator.CUSTOM:
        return f"CUSTOM:{opcode.customCode.decode() if opcode.customCode else '?'}"
    return _builtin_names().get(code, str(code))


@dataclass(frozen=True)
class Quantization:
    """A tensor's affine quantization, real = scale * (q - zero_point); empty arrays when it has none.

    Several scales: per channel, along ``axis``.
    """

    scales: np.ndarray  # float32, as stored
    zero_points: np.ndarray  # int64
    axis: int = 0

    @property
    def per_tensor(self) -> tuple[float, int] | None:
        """``(scale, zero point)`` when there is exactly one of each, else None: the rule of the
        interpreters' ``quantization`` field, which reads (0.0, 0) where this is None."""
        if self.scales.size != 1 or self.zero_points.size != 1:
            return None
        return float(self.scales[0]), int(self.zero_points[0])


@dataclass(frozen=True)
class Tensor:
    """One tensor of a graph, as the file declares it."""

    index: int
    name: str
    shape: tuple[int, ...]
    #: The shape with -1 for a dynamic dimension (the file's ``shape_signature``; its shape when absent).
    signature: tuple[int, ...]
    type_name: str  # the TFLite type: INT8, FLOAT32, ...
    dtype: np.dtype | None  # None for a type numpy has no equivalent of (STRING, RESOURCE, INT4, ...)
    quantization: Quantization
    buffer: int
    #: Backed by a non-empty buffer: a weight, bias, table or anchor set, not an activation.
    constant: bool

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's values (:data:`OTHER_TYPE_BYTES` per element for a type without dtype)."""
        return self.elements * (self.dtype.itemsize if self.dtype is not None else OTHER_TYPE_BYTES)


@dataclass(frozen=True)
class Operator:
    """One operator of a graph, in execution order (``index``); tensor indices, -1 for an absent
    optional input."""

    index: int
    name: str  # see opcode_name
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    """One subgraph: its tensors by index, its operators in execution order, its inputs and outputs."""

    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def producers(self) -> dict[int, Operator]:
        """Tensor index -> the operator that writes it (graph inputs and constants have none)."""
        return {o: op for op in self.operators for o in op.outputs}

    def consumers(self) -> dict[int, list[Operator]]:
        """Tensor index -> the operators that read it, in execution order."""
        readers: dict[int, list[Operator]] = {}
        for op in self.operators:
            for i in op.inputs:
                readers.setdefault(i, []).append(op)
        return readers


@dataclass(frozen=True)
class TFLiteFile:
    """A parsed TFLite file. ``name``: its path (or what the bytes are) for messages."""

    name: str
    graphs: tuple[Graph, ...]
    #: Every buffer's bytes, by buffer index (b"" for the empty ones).
    buffers: tuple[bytes, ...]
    #: The schema's object tree (``ModelT``): what to edit, then write with :func:`to_bytes`.
    flatbuffer: Any

    @property
    def main(self) -> Graph:
        """The first subgraph, the one an interpreter runs."""
        if not self.graphs:
            raise ValueError(f"{self.name}: the TFLite file has no subgraph")
        return self.graphs[0]

    def operator_names(self) -> list[str]:
        """Every operator's name (:func:`opcode_name`), graph by graph, in execution order."""
        return [op.name for g in self.graphs for op in g.operators]

    def constant(self, index: int, graph: int = 0) -> np.ndarray:
        """A constant tensor's values, in its dtype and shape (read-only)."""
        t = self.graphs[graph].tensors[index]
        if not t.constant or t.dtype is None:
            raise ValueError(f"{self.name}: tensor {index} ('{t.name}') is not a constant with a numpy type")
        return np.frombuffer(self.buffers[t.buffer], dtype=t.dtype).reshape(t.shape)


def read(path: str | os.PathLike) -> TFLiteFile:
    """The TFLite file at ``path``; one error naming it when it is missing, empty or not a TFLite file."""
    path = existing_file(path, "TFLite file")
    return parse(path.read_bytes(), str(path))


def parse(data: bytes | bytearray, name: str = "TFLite model") -> TFLiteFile:
    """A TFLite file from its bytes; ``name`` says what they are in the error a corrupt file gets."""
    s = schema()
    buf = bytearray(data)
    if len(buf) < 8 or not s.Model.ModelBufferHasIdentifier(buf, 0):
        raise ValueError(f"{name}: not a TFLite file (no 'TFL3' flatbuffer identifier)")
    try:
        model = s.ModelT.InitFromObj(s.Model.GetRootAsModel(buf, 0))
        buffers = tuple(_buffer_bytes(b, buf) for b in (model.buffers or []))
        graphs = tuple(_graph(sg, buffers, model.operatorCodes or []) for sg in (model.subgraphs or []))
    except Exception as exc:  # the bindings raise struct/Index/Type errors on a damaged flatbuffer
        raise ValueError(f"{name}: corrupt or truncated TFLite file ({type(exc).__name__}: {exc})") from None
    return TFLiteFile(name, graphs, buffers, model)


def to_bytes(flatbuffer: Any) -> bytes:
    """The file of a (possibly edited) ``ModelT``: what TensorFlow's ``flatbuffer_utils`` writes."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(flatbuffer.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _buffer_bytes(buffer: Any, raw: bytearray) -> bytes:
    if buffer.offset:  # a buffer stored after the flatbuffer (files over 2 GB)
        return bytes(raw[buffer.offset:buffer.offset + buffer.size])
    return b"" if buffer.data is None else bytes(np.asarray(buffer.data, dtype=np.uint8))


def _indices(values) -> tuple[int, ...]:
    return () if values is None else tuple(int(v) for v in values)


def _quantization(q: Any) -> Quantization:
    if q is None or q.scale is None or len(q.scale) == 0:
        return Quantization(np.zeros(0, np.float32), np.zeros(0, np.int64))
    zero_points = np.zeros(0, np.int64) if q.zeroPoint is None else np.asarray(q.zeroPoint, np.int64)
    return Quantization(np.asarray(q.scale, np.float32), zero_points, int(q.quantizedDimension))


def _graph(sg: Any, buffers: tuple[bytes, ...], opcodes: list) -> Graph:
    tensors = []
    for i, t in enumerate(sg.tensors or []):
        shape = _indices(t.shape)
        type_name = _type_names().get(t.type, str(t.type))
        numpy_type = _NUMPY_TYPES.get(type_name)
        tensors.append(Tensor(
            index=i, name=(t.name or b"").decode("utf-8", "replace"), shape=shape,
            signature=_indices(t.shapeSignature) if t.shapeSignature is not None else shape,
            type_name=type_name, dtype=None if numpy_type is None else np.dtype(numpy_type),
            quantization=_quantization(t.quantization), buffer=int(t.buffer),
            constant=0 <= t.buffer < len(buffers) and len(buffers[t.buffer]) > 0))
    operators = tuple(Operator(k, opcode_name(opcodes[op.opcodeIndex]), _indices(op.inputs), _indices(op.outputs))
                      for k, op in enumerate(sg.operators or []))
    return Graph(tuple(tensors), operators, _indices(sg.inputs), _indices(sg.outputs))
