"""Flatbuffer edits that give our TFLite files ST's exact output contract.

TensorFlow folds the anchors (a constant) out of the graph and orders outputs its own way. ST's
files have three float32 outputs, in this order: scores (1,NA,1+C), offsets (1,NA,4), anchors
(1,NA,4), the anchors being an int8 constant tiled over the batch, then DEQUANTIZE. This module
appends the anchors the same way (a float constant + TILE in float files) and fixes the output
order and the signature, on the flatbuffer's object tree from :mod:`ssd_mnv1.tflite_file`.

The static-batch variant (``--mcu``, for TensorFlow Lite Micro, which has no TILE kernel and no
dynamic shapes) appends the anchors without the batch: the int8 constant (NA,4), RESHAPE to
(1,NA,4) and DEQUANTIZE (the float file: a float constant + RESHAPE), so that no op depends on
the batch.
"""

from __future__ import annotations

import numpy as np

from ssd_mnv1.int8 import int8_affine
from ssd_mnv1.memory_plan import METADATA_NAME as PLAN_METADATA, plan_file, read_plan
from ssd_mnv1.tflite_file import Graph, builtin_code, parse, read, schema as tflite_schema, to_bytes

OUTPUT_NAMES = ("scores", "offsets", "anchors")


def _opcode_index(model, schema, builtin: int, version: int = 1) -> int:
    """Index of an opcode entry for ``builtin`` with at least ``version`` (added if missing)."""
    for i, code in enumerate(model.operatorCodes):
        if builtin_code(code) == builtin:
            code.version = max(code.version, version)
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _add_tensor(model, sg, schema, name: str, shape, dtype: int, data: np.ndarray | None = None,
                quant: tuple[float, int] | None = None, signature=None) -> int:
    buf = schema.BufferT()
    if data is not None:
        buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
    model.buffers.append(buf)
    t = schema.TensorT()
    t.shape = np.asarray(shape, dtype=np.int32)
    t.shapeSignature = None if signature is None else np.asarray(signature, dtype=np.int32)
    t.type = dtype
    t.buffer = len(model.buffers) - 1
    t.name = name.encode()
    if quant is not None:
        q = schema.QuantizationParametersT()
        q.scale = [float(quant[0])]
        q.zeroPoint = [int(quant[1])]
        t.quantization = q
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _add_op(model, sg, schema, builtin: int, inputs, outputs, version: int = 1, options=None, options_type: int = 0):
    op = schema.OperatorT()
    op.opcodeIndex = _opcode_index(model, schema, builtin, version)
    op.inputs = np.asarray(inputs, dtype=np.int32)
    op.outputs = np.asarray(outputs, dtype=np.int32)
    if options is not None:
        op.builtinOptionsType = options_type
        op.builtinOptions = options
    sg.operators.append(op)


def _batch_multiples(model, sg, schema, source: int) -> int:
    """int32 [batch, 1, 1] from the runtime shape of tensor ``source``: SHAPE -> STRIDED_SLICE -> CONCATENATION."""
    T, B, O = schema.TensorType, schema.BuiltinOperator, schema.BuiltinOptions
    shape_i = _add_tensor(model, sg, schema, "anchors_tile/input_shape", (len(sg.tensors[source].shape),), T.INT32)
    opts = schema.ShapeOptionsT()
    opts.outType = T.INT32
    _add_op(model, sg, schema, B.SHAPE, [source], [shape_i], options=opts, options_type=O.ShapeOptions)
    consts = [_add_tensor(model, sg, schema, f"anchors_tile/{n}", (1,), T.INT32, np.asarray([v], np.int32))
              for n, v in (("begin", 0), ("end", 1), ("stride", 1))]
    batch_i = _add_tensor(model, sg, schema, "anchors_tile/batch", (1,), T.INT32)
    _add_op(model, sg, schema, B.STRIDED_SLICE, [shape_i, *consts], [batch_i],
            options=schema.StridedSliceOptionsT(), options_type=O.StridedSliceOptions)
    ones_i = _add_tensor(model, sg, schema, "anchors_tile/ones", (2,), T.INT32, np.asarray([1, 1], np.int32))
    mult_i = _add_tensor(model, sg, schema, "anchors_tile/multiples", (3,), T.INT32)
    opts = schema.ConcatenationOptionsT()
    opts.axis = 0
    _add_op(model, sg, schema, B.CONCATENATION, [batch_i, ones_i], [mult_i], options=opts,
            options_type=O.ConcatenationOptions)
    return mult_i


#: Ops that make a file's result depend on its runtime batch; none may be in a static-batch file.
BATCH_OPS = ("SHAPE", "STRIDED_SLICE", "TILE")


def _static_anchors(model, sg, schema, anchors: np.ndarray, out_i: int, quantized: bool) -> None:
    """anchors (1,NA,4) into tensor ``out_i`` with no batch-dependent op: a (NA,4) constant, RESHAPE
    to (1,NA,4), then (int8 files) DEQUANTIZE. The RESHAPE stands where ST's TILE does: XNNPACK
    (LiteRT's CPU default) fails to set up a DEQUANTIZE of a constant that is a graph output."""
    T, B, O = schema.TensorType, schema.BuiltinOperator, schema.BuiltinOptions
    shape = anchors.shape
    shape_i = _add_tensor(model, sg, schema, "anchors/shape", (len(shape),), T.INT32, np.asarray(shape, np.int32))
    opts = schema.ReshapeOptionsT()
    opts.newShape = list(shape)
    if quantized:  # as ST's files, with RESHAPE for TILE: int8 constant -> RESHAPE -> DEQUANTIZE
        scale, zp, q = int8_affine(anchors)
        const_i = _add_tensor(model, sg, schema, "anchors_int8_const", shape[1:], T.INT8, q[0], (scale, zp))
        int8_i = _add_tensor(model, sg, schema, "anchors_int8", shape, T.INT8, None, (scale, zp))
        _add_op(model, sg, schema, B.RESHAPE, [const_i, shape_i], [int8_i], options=opts,
                options_type=O.ReshapeOptions)
        _add_op(model, sg, schema, B.DEQUANTIZE, [int8_i], [out_i])
        return
    const_i = _add_tensor(model, sg, schema, "anchors_const", shape[1:], T.FLOAT32, anchors[0])
    _add_op(model, sg, schema, B.RESHAPE, [const_i, shape_i], [out_i], options=opts, options_type=O.ReshapeOptions)


#: Ops that may stand between the head's SOFTMAX and the scores output (value-preserving).
_AFTER_SOFTMAX = ("DEQUANTIZE", "QUANTIZE", "RESHAPE")


def _comes_from_softmax(graph: Graph, tensor: int) -> bool:
    """Whether output ``tensor`` is a SOFTMAX's result (through DEQUANTIZE / QUANTIZE / RESHAPE).

    The scores are told from the offsets by the op that computes them, not by their width: a
    three-class model's scores are 4 wide (background + 3), as the offsets are.
    """
    producer = graph.producers()
    for _ in range(8):
        op = producer.get(tensor)
        if op is None:
            return False
        if op.name == "SOFTMAX":
            return True
        if op.name not in _AFTER_SOFTMAX:
            return False
        tensor = op.inputs[0]
    return False


def finalize_outputs(tflite: bytes, anchors: np.ndarray, *, quantized: bool, static_batch: bool = False) -> bytes:
    """Append the anchors output and order outputs (scores, offsets, anchors) with ST's signature.

    The anchors are a constant (int8 + DEQUANTIZE when ``quantized``, as in ST's files) tiled over
    the runtime batch of the input, so a file with a dynamic batch (signature -1) can be resized
    like ST's and still returns one anchor set per image. ``static_batch``: the file has batch 1
    (``--mcu``); the anchors are the constant itself, RESHAPEd to (1,NA,4) (and DEQUANTIZEd when
    ``quantized``): no op depends on the batch.
    """
    schema = tflite_schema()
    file = parse(tflite, "the converted TFLite model")
    model = file.flatbuffer
    if len(file.graphs) != 1:
        raise ValueError(f"expected one subgraph, found {len(file.graphs)}")
    graph, sg = file.main, model.subgraphs[0]
    outs = list(graph.outputs)
    shapes = {i: graph.tensors[i].shape for i in outs}
    na = anchors.shape[0]
    if len(outs) != 2:
        raise ValueError(f"expected 2 outputs (scores, offsets) before adding anchors, found {len(outs)}: {shapes}")
    softmax = [i for i in outs if _comes_from_softmax(graph, i)]
    if len(softmax) != 1 or shapes[softmax[0]][:2] != (1, na):
        raise ValueError(f"cannot tell scores from offsets in outputs {shapes}: expected one (1, {na}, 1+C) "
                         f"output computed by a SOFTMAX, found {len(softmax)}")
    scores_i = softmax[0]
    offsets_i = next(i for i in outs if i != scores_i)
    if shapes[offsets_i] != (1, na, 4):
        raise ValueError(f"the offsets output has shape {shapes[offsets_i]}, expected (1, {na}, 4)")
    input_i = int(sg.inputs[0])
    in_sig = sg.tensors[input_i].shapeSignature
    dynamic = in_sig is not None and int(in_sig[0]) == -1
    if static_batch and (dynamic or int(sg.tensors[input_i].shape[0]) != 1):
        raise ValueError(f"a static-batch file needs an input of batch 1, this one has shape "
                         f"{list(sg.tensors[input_i].shape)} (signature {None if in_sig is None else list(in_sig)})")
    signature = (-1, na, 4) if dynamic else None
    anchors = anchors.reshape(1, na, 4).astype(np.float32)
    T, B = schema.TensorType, schema.BuiltinOperator
    multiples_i = None if static_batch else _batch_multiples(model, sg, schema, input_i)
    out_i = _add_tensor(model, sg, schema, "anchors", (1, na, 4), T.FLOAT32, signature=signature)
    if static_batch:
        _static_anchors(model, sg, schema, anchors, out_i, quantized)
    elif quantized:
        scale, zp, q = int8_affine(anchors)
        const_i = _add_tensor(model, sg, schema, "anchors_int8_const", (1, na, 4), T.INT8, q, (scale, zp))
        tiled_i = _add_tensor(model, sg, schema, "anchors_int8", (1, na, 4), T.INT8, None, (scale, zp), signature)
        _add_op(model, sg, schema, B.TILE, [const_i, multiples_i], [tiled_i], version=3)  # v3: int8
        _add_op(model, sg, schema, B.DEQUANTIZE, [tiled_i], [out_i])
    else:
        const_i = _add_tensor(model, sg, schema, "anchors_const", (1, na, 4), T.FLOAT32, anchors)
        _add_op(model, sg, schema, B.TILE, [const_i, multiples_i], [out_i])
    _set_outputs(model, sg, schema, (scores_i, offsets_i, out_i))
    return to_bytes(model)


def _set_outputs(model, sg, schema, outputs: tuple[int, ...]) -> None:
    """The graph's and the signature's outputs, named as :data:`OUTPUT_NAMES` (scores, offsets, anchors)."""
    sg.outputs = np.asarray(outputs, dtype=np.int32)
    for idx, name in zip(outputs[:2], OUTPUT_NAMES):
        sg.tensors[idx].name = name.encode()
    for sig in model.signatureDefs or []:
        maps = []
        for name, idx in zip(OUTPUT_NAMES, outputs):
            m = schema.TensorMapT()
            m.name = name.encode()
            m.tensorIndex = int(idx)
            maps.append(m)
        sig.outputs = maps


def int8_outputs(tflite: bytes, name: str = "TFLite model") -> bytes:
    """An int8 file with ST's float outputs (scores, offsets, anchors) turned into two int8 outputs:
    the int8 scores and offsets its DEQUANTIZEs read (their scale and zero point in the file), and
    no anchors (the host holds them: :func:`ssd_mnv1.anchors.deployed_anchors`, the values of the
    anchors output removed). The same integers: nothing is recomputed, ops and tensors that only
    fed the removed outputs are dropped, and so are the constant buffers only they used. A file
    with an offline memory plan gets a new one (tensor indices change)."""
    schema = tflite_schema()
    file = parse(tflite, name)
    model, graph, sg = file.flatbuffer, file.main, file.flatbuffer.subgraphs[0]
    if len(graph.outputs) != 3:
        raise ValueError(f"{name}: {len(graph.outputs)} outputs; int8 outputs are made from ST's three "
                         "(scores, offsets, anchors)")
    producers = graph.producers()
    dequantize = [producers.get(i) for i in graph.outputs[:2]]
    if any(op is None or op.name != "DEQUANTIZE" or graph.tensors[op.inputs[0]].type_name != "INT8"
           for op in dequantize):
        raise ValueError(f"{name}: the scores and offsets are not each the DEQUANTIZE of an int8 tensor "
                         "(int8 outputs need an int8 file)")
    outputs = tuple(int(op.inputs[0]) for op in dequantize)
    needed, keep = set(outputs), []
    for op in reversed(graph.operators):  # the ops the new outputs depend on
        if needed & set(op.outputs):
            keep.append(op.index)
            needed |= {i for i in op.inputs if i >= 0}
    sg.operators = [sg.operators[k] for k in sorted(keep)]
    _set_outputs(model, sg, schema, outputs)
    _drop_unused_tensors(model, sg)
    planned = read_plan(file) is not None  # its offsets name the old tensor indices: planned again below
    model.metadata = [m for m in model.metadata or [] if (m.name or b"").decode() != PLAN_METADATA]
    _drop_unused_buffers(model)
    data = to_bytes(model)
    return plan_file(data, name)[0] if planned else data


def _drop_unused_tensors(model, sg) -> None:
    """Remove the tensors no op or graph input/output uses, renumbering the rest (signatures too)."""
    used = {int(i) for op in sg.operators for i in list(op.inputs) + list(op.outputs) if i >= 0}
    used |= {int(i) for i in sg.inputs} | {int(i) for i in sg.outputs}
    new_index = {old: new for new, old in enumerate(sorted(used))}
    sg.tensors = [t for k, t in enumerate(sg.tensors) if k in used]
    remap = (lambda ids: np.asarray([new_index[int(i)] if i >= 0 else -1 for i in ids], dtype=np.int32))
    for op in sg.operators:
        op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
    sg.inputs, sg.outputs = remap(sg.inputs), remap(sg.outputs)
    for sig in model.signatureDefs or []:
        for m in list(sig.inputs or []) + list(sig.outputs or []):
            m.tensorIndex = new_index[int(m.tensorIndex)]


def _drop_unused_buffers(model) -> None:
    """Remove the buffers no tensor or metadata entry uses (buffer 0, the empty one, stays)."""
    used = {0} | {int(t.buffer) for sg in model.subgraphs for t in sg.tensors}
    used |= {int(m.buffer) for m in model.metadata or []}
    used |= {int(b) for b in (model.metadataBuffer if model.metadataBuffer is not None else [])}
    new_index = {old: new for new, old in enumerate(sorted(used))}
    model.buffers = [b for k, b in enumerate(model.buffers) if k in used]
    for sg in model.subgraphs:
        for t in sg.tensors:
            t.buffer = new_index[int(t.buffer)]
    for m in model.metadata or []:
        m.buffer = new_index[int(m.buffer)]
    if model.metadataBuffer is not None:
        model.metadataBuffer = [new_index[int(b)] for b in model.metadataBuffer]


def op_list(tflite_path) -> list[str]:
    """Builtin op names of a TFLite file, in graph order (custom/Flex ops by their custom code)."""
    return read(tflite_path).operator_names()
