"""QDQ ONNX export: the int8 model as QuantizeLinear/DequantizeLinear pairs, for QDQ consumers
(ST Edge AI Core for the STM32N6, ST's PyTorch model zoo, onnxruntime's QDQ kernels).

The graph carries the QAT / calibrated model's own quantization, nothing is re-derived:

* input ``input``: uint8 NCHW raw pixels -> DequantizeLinear(1/127.5, 127), ST's int8 input contract;
* every conv: int8 weight initializer (symmetric, zero point 0, per output channel or per tensor,
  the scales :class:`~ssd_mnv1.quantization.qat.WeightQuantizer` computes on the BN-folded weights)
  -> DequantizeLinear, and an int32 bias -> DequantizeLinear(input scale x weight scale), as TFLite
  and onnxruntime's quantizer store biases;
* every activation quantizer (conv block outputs after the fused ReLU6, the neck's pooled input and
  adds, the concatenated logits and offsets, the softmax output at 1/256, zp -128) is a
  QuantizeLinear/DequantizeLinear pair with its int8 scale and zero point;
* data-movement ops (Transpose, Reshape, Pad, Resize) are followed by a pair with their input's
  parameters, so every op runs between DequantizeLinear and QuantizeLinear as in onnxruntime's
  QDQ format (lossless except after the bilinear Resize, where TFLite's int8 resize rounds too);
* outputs ``scores``, ``offsets``, ``anchors`` (float), ST's order.

Where the model's weight scale cannot be stored as it is, TFLite's converter rules apply (so both
files agree there too): a channel whose weights span less than 5e-7 (all-zero channels of ST's
model) gets that range, and a weight scale is raised until the int32 bias fits in +-2^30. Both
change nothing numerically that matters (zero or sub-1e-6 weights).

How: the model's quantizers are frozen to constants (an export view), the view goes through the
TorchScript exporter (fake-quantize ops become Q/DQ pairs; ONNX accepts only int8 [-128, 127],
which symmetric weights never reach at -128, so the numbers are the same), onnxsim with mutable
initializers (so constant weight Q/DQ chains are not folded back to float), then one graph pass
stores weights as int8, biases as int32 and makes the input uint8.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssd_mnv1.backbone import ConvBN
from ssd_mnv1.fileio import atomic_path
from ssd_mnv1.model import SSDMobileNetV1
from ssd_mnv1.preprocess import INPUT_SCALE, INPUT_ZERO_POINT
from ssd_mnv1.quantization.qat import ActivationQuantizer, WeightQuantizer, is_qat

from .onnx_stage import INPUT_NAME, OUTPUT_NAMES

#: Ops that only move or resample values: followed by a Q/DQ pair with their input's parameters.
PASS_THROUGH_OPS = ("Transpose", "Reshape", "Pad", "Resize")
QDQ_OPSET = 13


# ---------------------------------------------------------------------------------- model side


class _FrozenFakeQuant(nn.Module):
    """An activation quantizer with its scale and zero point as Python constants, so the exporter
    writes one QuantizeLinear/DequantizeLinear pair with scalar parameters (no range arithmetic)."""

    def __init__(self, quantizer: ActivationQuantizer):
        super().__init__()
        scale, zero_point = quantizer.qparams()
        self.scale, self.zero_point = float(scale), int(zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, -128, 127)


class _FrozenConvBN(nn.Module):
    """A QAT :class:`ConvBN` with BN folded into constant float weights and bias and the weight
    scales fixed, computing exactly what the QAT block computes (weights on the int8 grid)."""

    def __init__(self, block: ConvBN):
        super().__init__()
        if not isinstance(block.weight_quant, WeightQuantizer):
            raise ValueError("the model's conv blocks have no weight quantizer: prepare it with prepare_qat")
        with torch.no_grad():
            weight, bias = block.folded_weight_and_bias()
            scales = block.weight_quant.scales(weight)
        c = block.conv
        self.stride, self.padding, self.groups = c.stride, c.padding, c.groups
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.per_tensor = bool(block.weight_quant.per_tensor)
        self.tensor_scale = float(scales[0])  # per-tensor: every entry is the same
        self.register_buffer("weight_scale", scales.detach().clone())
        self.register_buffer("weight_zero_point", torch.zeros_like(scales, dtype=torch.int32))
        self.pad_bottom_right = block.stride == 2
        self.act = block.act
        self.output_quant = _frozen(block.output_quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_bottom_right:
            x = F.pad(x, (0, 1, 0, 1))
        if self.per_tensor:
            w = torch.fake_quantize_per_tensor_affine(self.weight, self.tensor_scale, 0, -128, 127)
        else:
            w = torch.fake_quantize_per_channel_affine(self.weight, self.weight_scale, self.weight_zero_point,
                                                       0, -128, 127)
        return self.output_quant(self.act(F.conv2d(x, w, self.bias, self.stride, self.padding, 1, self.groups)))


def _frozen(module: nn.Module) -> nn.Module:
    return _FrozenFakeQuant(module) if isinstance(module, ActivationQuantizer) else module


def _export_view(model: SSDMobileNetV1) -> SSDMobileNetV1:
    """A copy of the QAT model whose quantizers are constants and whose input quantizer is gone
    (the graph pass gives the file a uint8 input with the same dequantization instead)."""
    view = copy.deepcopy(model).eval().cpu()

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, ConvBN):
                setattr(parent, name, _FrozenConvBN(child))
            elif isinstance(child, ActivationQuantizer):
                setattr(parent, name, _FrozenFakeQuant(child))
            else:
                swap(child)

    swap(view)
    # The head convs are quantized at their concatenation's scale (see prepare_qat): in the file each
    # writes its own Q/DQ pair with those parameters, so every conv output is int8.
    for convs, shared in ((view.head.cls, view.head.cls_quant), (view.head.box, view.head.box_quant)):
        for conv in convs:
            conv.output_quant = copy.deepcopy(shared)
    view.input_quant = nn.Identity()
    return view


def check_exportable(model: nn.Module) -> None:
    """A QDQ file needs a QAT model whose every activation quantizer has a range: an uncalibrated
    one passes values through, which would leave a float island in the int8 graph."""
    if not is_qat(model):
        raise ValueError("export_qdq_onnx needs a model prepared with prepare_qat and calibrated "
                         "(a QAT checkpoint, or quantization.calibration.int8_simulation(float_model, images))")
    missing = [name for name, m in model.named_modules()
               if isinstance(m, ActivationQuantizer) and not torch.isfinite(m.min_val)]
    if missing:
        raise ValueError(f"{len(missing)} activation quantizers have no range (e.g. {missing[0]}); "
                         "calibrate the model first")


# ---------------------------------------------------------------------------------- graph side


class _Graph:
    """Indexes over an ONNX graph for the rewrite: initializers by name and node producers."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.model, self.graph = model, model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self._np = numpy_helper
        self._names: set[str] = set(self.inits) | set(self.producer)

    def const(self, name: str) -> np.ndarray:
        if name not in self.inits:
            raise ValueError(f"'{name}' is not a constant initializer")
        return self._np.to_array(self.inits[name])

    def add_const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        tensor = self._np.from_array(np.asarray(value), name)
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def consumers(self, name: str) -> list:
        return [n for n in self.graph.node if name in n.input]

    def qdq_params(self, dq_output: str) -> tuple[np.ndarray, np.ndarray]:
        """(scale, zero point) of the DequantizeLinear producing ``dq_output``."""
        node = self.producer.get(dq_output)
        if node is None or node.op_type != "DequantizeLinear":
            kind = node.op_type if node is not None else "a graph input or constant"
            raise ValueError(f"'{dq_output}' comes from {kind}, not a DequantizeLinear: the graph is not fully "
                             "quantized there")
        return self.const(node.input[1]), self.const(node.input[2])


#: TFLite's weight rules, applied where the model's scales cannot be stored as they are:
#: a channel whose weights span less than this is given this range (all-zero channels of ST's
#: model would otherwise get a 1e-14 scale) ...
NEAR_ZERO_WEIGHT_RANGE = 5e-7
#: ... and a weight scale is raised until the int32 bias fits in +-2^30 (TFLite keeps the other
#: half of int32 as accumulator headroom).
BIAS_LIMIT = 2.0 ** 30


def _torch_quantize(weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 of ``weight`` as torch's fake-quantize rounds it (nearbyint(w * (1/scale))), so the file
    holds the very integers the QAT model computed with; ``scale`` per output channel (axis 0)."""
    s = scale.astype(np.float32).reshape([-1] + [1] * (weight.ndim - 1))
    inv = np.float32(1.0) / s
    return np.clip(np.rint(weight.astype(np.float32) * inv), -127, 127).astype(np.int8)


def _storable_weight_scale(scale: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                           in_scale: float, per_tensor: bool) -> np.ndarray:
    """The model's weight scales (per output channel), widened as TFLite widens them where the
    model's would not store: near-zero channels, and biases that would overflow int32. Channels
    not concerned keep their scale bit for bit."""
    floor = np.float32(NEAR_ZERO_WEIGHT_RANGE / 127.0)
    amax = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)
    tiny = (amax.max() if per_tensor else amax) < NEAR_ZERO_WEIGHT_RANGE
    out = np.where(tiny, np.maximum(scale, floor), scale).astype(np.float32)
    if bias is not None:
        need = (np.abs(bias.astype(np.float64)) / (float(in_scale) * BIAS_LIMIT)).astype(np.float32)
        need = np.full_like(need, need.max()) if per_tensor else need
        out = np.where(need > out, need, out).astype(np.float32)
    return out


def _quantize_convs(g: _Graph) -> int:
    """Per conv: QuantizeLinear(float weight) -> DequantizeLinear becomes int8 initializer ->
    DequantizeLinear (zero point 0), and the float bias an int32 initializer -> DequantizeLinear at
    scale input_scale x weight_scale, as TFLite and onnxruntime's quantizer store them."""
    from onnx import helper

    done = 0
    for conv in [n for n in g.graph.node if n.op_type == "Conv"]:
        w_dq = g.producer[conv.input[1]]
        w_q = g.producer.get(w_dq.input[0])
        if w_dq.op_type != "DequantizeLinear" or w_q is None or w_q.op_type != "QuantizeLinear":
            raise ValueError(f"conv '{conv.name}' has no fake-quantized weight")
        weight, scale = g.const(w_q.input[0]), g.const(w_q.input[1])
        per_tensor = scale.ndim == 0
        in_scale, _ = g.qdq_params(conv.input[0])
        bias = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        scales = _storable_weight_scale(np.broadcast_to(scale, weight.shape[:1]), weight, bias, in_scale, per_tensor)
        q = _torch_quantize(weight, scales)
        stored = scales[:1].reshape(()) if per_tensor else scales
        base = w_q.input[0]
        w_dq.input[:] = [g.add_const(f"{base}_quantized", q), g.add_const(f"{base}_scale", stored),
                         g.add_const(f"{base}_zero_point", np.zeros(stored.shape, np.int8))]
        g.graph.node.remove(w_q)
        if bias is not None:
            b_scale = (np.float32(in_scale) * stored).astype(np.float32)
            b_q = np.rint(bias.astype(np.float64) / np.broadcast_to(b_scale, bias.shape).astype(np.float64))
            out = g.fresh(f"{conv.input[2]}_dequantized")
            attrs = {} if per_tensor else {"axis": 0}
            dq = helper.make_node("DequantizeLinear", [g.add_const(f"{conv.input[2]}_quantized", b_q.astype(np.int32)),
                                                       g.add_const(f"{conv.input[2]}_scale", b_scale)],
                                  [out], name=f"{conv.name}_bias_DequantizeLinear", **attrs)
            g.graph.node.insert(list(g.graph.node).index(conv), dq)
            g.producer[out] = dq
            conv.input[2] = out
        done += 1
    return done


def _quantize_input(g: _Graph) -> None:
    """The float input becomes uint8 raw pixels -> DequantizeLinear(1/127.5, 127): ST's contract."""
    from onnx import TensorProto, helper

    (inp,) = [i for i in g.graph.input if i.name == INPUT_NAME]
    real = g.fresh(f"{INPUT_NAME}_dequantized")
    for node in g.consumers(INPUT_NAME):
        node.input[:] = [real if x == INPUT_NAME else x for x in node.input]
    scale = g.add_const(f"{INPUT_NAME}_scale", np.asarray(INPUT_SCALE, np.float32))
    zero = g.add_const(f"{INPUT_NAME}_zero_point", np.asarray(INPUT_ZERO_POINT, np.uint8))
    dq = helper.make_node("DequantizeLinear", [INPUT_NAME, scale, zero], [real], name=f"{INPUT_NAME}_DequantizeLinear")
    g.graph.node.insert(0, dq)
    g.producer[real] = dq
    inp.type.tensor_type.elem_type = TensorProto.UINT8


def _requantize_pass_through(g: _Graph) -> int:
    """A Q/DQ pair with the input's parameters after each data-movement op, as onnxruntime's
    quantizer writes them, so QDQ consumers run these ops in int8 too."""
    from onnx import helper

    added = 0
    for node in list(g.graph.node):
        if node.op_type not in PASS_THROUGH_OPS:
            continue
        consumers = g.consumers(node.output[0])
        if consumers and all(c.op_type == "QuantizeLinear" for c in consumers):
            continue
        src = g.producer[node.input[0]]
        if src.op_type != "DequantizeLinear":
            raise ValueError(f"{node.op_type} '{node.name}' does not read a dequantized tensor")
        scale, zero = src.input[1], src.input[2]
        out = node.output[0]
        raw = g.fresh(f"{out}_float")
        q_out = g.fresh(f"{out}_quantized")
        node.output[0] = raw
        q = helper.make_node("QuantizeLinear", [raw, scale, zero], [q_out], name=f"{node.name}_QuantizeLinear")
        dq = helper.make_node("DequantizeLinear", [q_out, scale, zero], [out], name=f"{node.name}_DequantizeLinear")
        at = list(g.graph.node).index(node) + 1
        g.graph.node.insert(at, dq)
        g.graph.node.insert(at, q)
        g.producer.update({raw: node, q_out: q, out: dq})
        added += 1
    return added


def _prune_initializers(g: _Graph) -> None:
    used = {x for n in g.graph.node for x in n.input} | {o.name for o in g.graph.output}
    keep = [t for t in g.graph.initializer if t.name in used]
    del g.graph.initializer[:]
    g.graph.initializer.extend(keep)


def _check_structure(model) -> None:
    """What QDQ consumers rely on: int8 weights only, int32 biases, every conv reading a DQ."""
    g = _Graph(model)
    for node in g.graph.node:
        if node.op_type != "Conv":
            continue
        g.qdq_params(node.input[0])
        for i in (1, 2)[: len(node.input) - 1]:
            dq = g.producer.get(node.input[i])
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in g.inits:
                raise AssertionError(f"conv '{node.name}' input {i} is not a dequantized constant")
    if [o.name for o in g.graph.output] != list(OUTPUT_NAMES):
        raise AssertionError(f"outputs {[o.name for o in g.graph.output]}, expected {list(OUTPUT_NAMES)}")


def _trace(model: SSDMobileNetV1, tmp: Path, opset: int):
    """TorchScript export of the export view, then onnxsim that leaves constant Q/DQ chains alone."""
    import onnx
    import onnxsim

    size = model.input_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_export_view(model), torch.zeros(1, 3, size, size), str(tmp), input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES), opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    simplified, ok = onnxsim.simplify(onnx.load(str(tmp)), mutable_initializer=True)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified QDQ model")
    return simplified


def export_qdq_onnx(model: SSDMobileNetV1, path: str | os.PathLike, opset: int = QDQ_OPSET) -> Path:
    """Write ``model`` (QAT-prepared and calibrated) as a checked QDQ ONNX file (see the module doc)."""
    import onnx

    check_exportable(model)
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="ssd_mnv1_qdq_") as tmp:
        proto = _trace(model, Path(tmp) / "traced.onnx", opset)
    g = _Graph(proto)
    _quantize_input(g)
    _requantize_pass_through(g)
    _quantize_convs(g)
    _prune_initializers(g)
    del g.graph.value_info[:]
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto, full_check=True)
    _check_structure(proto)
    with atomic_path(path) as tmp_file:
        onnx.save(proto, str(tmp_file))
    return path


def qdq_parity(path: str | os.PathLike, model: SSDMobileNetV1, images: np.ndarray) -> dict[str, float]:
    """Max |difference| of scores and offsets between onnxruntime on the QDQ file (uint8 NCHW raw
    pixels) and the fake-quant model on the same pixels (uint8 NHWC ``images``)."""
    import onnxruntime as ort

    from ssd_mnv1.preprocess import normalize

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    diffs = {"scores": 0.0, "offsets": 0.0}
    model = model.eval()
    for image in images:
        ort_out = session.run(["scores", "offsets"], {INPUT_NAME: image[None].transpose(0, 3, 1, 2).copy()})
        with torch.no_grad():
            pt = model(torch.from_numpy(normalize(image[None])).permute(0, 3, 1, 2))
        for name, a, b in zip(diffs, ort_out, pt):
            diffs[name] = max(diffs[name], float(np.abs(a - b.numpy()).max()))
    return diffs


# ------------------------------------------------------------------------- QDQ vs int8 TFLite


@dataclass
class _Conv:
    """One conv of either file: int8 weights in PyTorch OIHW layout and its quantization."""

    name: str
    weight: np.ndarray
    weight_scale: np.ndarray
    bias_scale: np.ndarray | None
    input_q: tuple[float, int]
    output_q: tuple[float, int] | None


def _qdq_convs(path: str | os.PathLike) -> tuple[list[_Conv], dict]:
    import onnx

    g = _Graph(onnx.load(str(path)))
    convs = []
    for node in g.graph.node:
        if node.op_type != "Conv":
            continue
        w_dq = g.producer[node.input[1]]
        b_dq = g.producer.get(node.input[2]) if len(node.input) > 2 else None
        s_in, z_in = g.qdq_params(node.input[0])
        z_in = int(z_in) - (128 if z_in.dtype == np.uint8 else 0)  # as int8, as TFLite's QUANTIZE makes it
        out = node.output[0]
        after = g.consumers(out)
        if len(after) == 1 and after[0].op_type in ("Clip", "Relu"):
            after = g.consumers(after[0].output[0])
        q = next((n for n in after if n.op_type == "QuantizeLinear"), None)
        output_q = (float(g.const(q.input[1])), int(g.const(q.input[2]))) if q is not None else None
        convs.append(_Conv(node.name, g.const(w_dq.input[0]), np.atleast_1d(g.const(w_dq.input[1])),
                           np.atleast_1d(g.const(b_dq.input[1])) if b_dq is not None else None,
                           (float(s_in), int(z_in)), output_q))
    (inp,) = [n for n in g.graph.node if INPUT_NAME in n.input]
    extra = {"input": (float(g.const(inp.input[1])), int(g.const(inp.input[2]))),
             "concat_outputs": _qdq_concat_quant(g), "softmax_output": _qdq_after(g, "Softmax")}
    return convs, extra


def _qdq_after(g: _Graph, op: str) -> tuple[float, int] | None:
    for node in g.graph.node:
        if node.op_type == op:
            q = next((n for n in g.consumers(node.output[0]) if n.op_type == "QuantizeLinear"), None)
            if q is not None:
                return float(g.const(q.input[1])), int(g.const(q.input[2]))
    return None


#: Ops between a head concatenation and the softmax that leave the values as they are (QDQ pairs
#: in the ONNX file, a RESHAPE in either).
_TO_SOFTMAX = ("QuantizeLinear", "DequantizeLinear", "Reshape", "RESHAPE", "QUANTIZE", "DEQUANTIZE")


def _concat_role(op_types_after: list[str]) -> str:
    """``logits`` when a concatenation's output reaches a softmax through value-preserving ops
    only, else ``offsets``. Read from the graph, not the width: with three classes the logits are
    4 wide (1+C) like the offsets."""
    for op in op_types_after:
        if op in ("Softmax", "SOFTMAX"):
            return "logits"
        if op not in _TO_SOFTMAX:
            break
    return "offsets"


def _qdq_concat_quant(g: _Graph) -> dict[str, tuple[float, int]]:
    """Output quantization of the head concatenations, by role: ``logits`` (1+C wide, read by the
    softmax) and ``offsets`` (4 wide)."""
    out = {}
    for node in g.graph.node:
        if node.op_type != "Concat":
            continue
        q = next((n for n in g.consumers(node.output[0]) if n.op_type == "QuantizeLinear"), None)
        if q is None:
            continue
        after, cur = [], node
        while len(after) < 8:
            nxt = g.consumers(cur.output[0])
            if len(nxt) != 1:
                break
            cur = nxt[0]
            after.append(cur.op_type)
        out[_concat_role(after)] = (float(g.const(q.input[1])), int(g.const(q.input[2])))
    return out


def _tflite_convs(path: str | os.PathLike) -> tuple[list[_Conv], dict]:
    from .tflite_edit import _schema

    schema, fbu = _schema()
    model = fbu.read_model(str(path))
    sg = model.subgraphs[0]
    B = schema.BuiltinOperator
    names = {B.CONV_2D: "CONV_2D", B.DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D"}

    def quant(i: int) -> tuple[np.ndarray, np.ndarray] | None:
        q = sg.tensors[i].quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            return None
        return np.asarray(q.scale, np.float64), np.asarray(q.zeroPoint, np.int64)

    def per_tensor(i: int) -> tuple[float, int] | None:
        q = quant(i)
        return (float(q[0][0]), int(q[1][0])) if q is not None else None

    convs, extra = [], {"concat_outputs": {}, "softmax_output": None}
    readers: dict[int, list] = {}
    for op in sg.operators:
        for i in op.inputs:
            readers.setdefault(int(i), []).append(op)

    def op_name(op) -> str:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        return next((k for k, v in vars(B).items() if v == builtin and not k.startswith("_")), str(builtin))

    def ops_after(op) -> list[str]:
        after = []
        while len(after) < 8 and len(readers.get(int(op.outputs[0]), [])) == 1:
            op = readers[int(op.outputs[0])][0]
            after.append(op_name(op))
        return after

    for k, op in enumerate(sg.operators):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin in names:
            t_in, t_w = int(op.inputs[0]), int(op.inputs[1])
            t_b = int(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
            w_t = sg.tensors[t_w]
            raw = np.frombuffer(bytes(model.buffers[w_t.buffer].data), np.int8).reshape(w_t.shape)
            # CONV_2D: OHWI -> OIHW; DEPTHWISE_CONV_2D: 1HWC -> C1HW.
            weight = raw.transpose(0, 3, 1, 2) if builtin == B.CONV_2D else raw.transpose(3, 0, 1, 2)
            convs.append(_Conv(f"{names[builtin]}#{k}", weight, quant(t_w)[0],
                               quant(t_b)[0] if t_b is not None and quant(t_b) else None,
                               per_tensor(t_in), per_tensor(int(op.outputs[0]))))
        elif builtin == B.CONCATENATION:
            out = int(op.outputs[0])
            if per_tensor(out) is not None:
                extra["concat_outputs"][_concat_role(ops_after(op))] = per_tensor(out)
        elif builtin == B.SOFTMAX:
            extra["softmax_output"] = per_tensor(int(op.outputs[0]))
    inp = int(sg.inputs[0])
    extra["input"] = per_tensor(inp)
    return convs, extra


def _rel(a: np.ndarray | float, b: np.ndarray | float) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape and a.size != 1 and b.size != 1:
        return float("inf")
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


def _match(qdq: list[_Conv], tfl: list[_Conv]) -> list[tuple[_Conv, _Conv, int]]:
    """Pair each QDQ conv with the TFLite conv of the same weight shape whose int8 weights differ
    in the fewest elements (0 when the two files quantized the same weights identically)."""
    pairs, free = [], list(tfl)
    for c in qdq:
        same = [t for t in free if t.weight.shape == c.weight.shape]
        if not same:
            continue
        best = min(same, key=lambda t: int(np.count_nonzero(t.weight != c.weight)))
        pairs.append((c, best, int(np.count_nonzero(best.weight != c.weight))))
        free.remove(best)
    return pairs


def compare_scales(qdq_path: str | os.PathLike, tflite_path: str | os.PathLike) -> dict:
    """Evidence that a QDQ file and an int8 TFLite of the same model carry the same quantization.

    Convs are paired by their int8 weights (layouts converted); per pair the weight scales, the
    bias scales, the conv input's and output's activation scales and zero points are compared.
    The head concatenations (``logits``, read by the softmax, and ``offsets``: by role, since with
    three classes both are 4 wide), the softmax output and the input are compared too.
    Returns a dict; :func:`format_scale_report` prints it.
    """
    qdq, q_extra = _qdq_convs(qdq_path)
    tfl, t_extra = _tflite_convs(tflite_path)
    pairs = _match(qdq, tfl)
    rows = []
    for c, t, diff in pairs:
        rows.append({
            "qdq": c.name, "tflite": t.name, "weight_elements": int(c.weight.size), "weight_elements_differing": diff,
            "weight_scale_rel": _rel(c.weight_scale, t.weight_scale),
            "weight_scale_count": (int(c.weight_scale.size), int(t.weight_scale.size)),
            "bias_scale_rel": _rel(c.bias_scale, t.bias_scale) if c.bias_scale is not None and t.bias_scale is not None
            else None,
            "input_scale_rel": _rel(c.input_q[0], t.input_q[0]), "input_zp_diff": c.input_q[1] - t.input_q[1],
            "output_scale_rel": _rel(c.output_q[0], t.output_q[0]) if c.output_q and t.output_q else None,
            "output_zp_diff": c.output_q[1] - t.output_q[1] if c.output_q and t.output_q else None,
        })

    def worst(key: str, absolute: bool = False) -> float | None:
        vals = [abs(r[key]) if absolute else r[key] for r in rows if r[key] is not None]
        return max(vals) if vals else None

    concat = {k: {"qdq": v, "tflite": t_extra["concat_outputs"].get(k),
                  "scale_rel": _rel(v[0], t_extra["concat_outputs"][k][0]) if k in t_extra["concat_outputs"] else None,
                  "zp_diff": v[1] - t_extra["concat_outputs"][k][1] if k in t_extra["concat_outputs"] else None}
              for k, v in q_extra["concat_outputs"].items()}
    return {
        "qdq_convs": len(qdq), "tflite_convs": len(tfl), "matched": len(pairs),
        "exact_weight_matches": sum(1 for r in rows if r["weight_elements_differing"] == 0),
        "max_weight_elements_differing": worst("weight_elements_differing"),
        "max_weight_scale_rel": worst("weight_scale_rel"), "max_bias_scale_rel": worst("bias_scale_rel"),
        "max_input_scale_rel": worst("input_scale_rel"), "max_input_zp_diff": worst("input_zp_diff", True),
        "max_output_scale_rel": worst("output_scale_rel"), "max_output_zp_diff": worst("output_zp_diff", True),
        "input": {"qdq": q_extra["input"], "tflite": t_extra["input"]},
        "concat_outputs": concat,
        "softmax_output": {"qdq": q_extra["softmax_output"], "tflite": t_extra["softmax_output"]},
        "convs": rows,
    }


def format_scale_report(report: dict) -> str:
    """A short human summary of :func:`compare_scales`."""
    def f(v) -> str:
        return "–" if v is None else f"{v:.2e}" if isinstance(v, float) else str(v)

    lines = [f"convs: {report['matched']} of {report['qdq_convs']} QDQ matched to {report['tflite_convs']} TFLite "
             f"({report['exact_weight_matches']} with identical int8 weights; worst pair differs in "
             f"{report['max_weight_elements_differing']} elements)",
             f"max rel. diff: weight scales {f(report['max_weight_scale_rel'])}, bias scales "
             f"{f(report['max_bias_scale_rel'])}, conv input scales {f(report['max_input_scale_rel'])} "
             f"(zp diff {f(report['max_input_zp_diff'])}), conv output scales {f(report['max_output_scale_rel'])} "
             f"(zp diff {f(report['max_output_zp_diff'])})",
             f"input: QDQ {report['input']['qdq']} vs TFLite {report['input']['tflite']}",
             f"softmax output: QDQ {report['softmax_output']['qdq']} vs TFLite {report['softmax_output']['tflite']}"]
    off = [r["qdq"] for r in report["convs"] if r["output_scale_rel"] is not None and r["output_scale_rel"] > 1e-3]
    if off:
        lines.append(f"conv outputs whose scale differs by more than 0.1 %: {', '.join(off)}")
    for k, v in sorted(report["concat_outputs"].items()):
        lines.append(f"concat {k}: QDQ {v['qdq']} vs TFLite {v['tflite']} (scale rel {f(v['scale_rel'])}, "
                     f"zp diff {f(v['zp_diff'])})")
    return "\n".join(lines)
