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

Checking a written file (its parity with the fake-quant model, its scales against the int8 TFLite
file's): :mod:`.qdq_audit`.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssd_mnv1.layers import ConvBN
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


class OnnxGraph:
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


def _quantize_convs(g: OnnxGraph) -> int:
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


def _quantize_input(g: OnnxGraph) -> None:
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


def _requantize_pass_through(g: OnnxGraph) -> int:
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


def _prune_initializers(g: OnnxGraph) -> None:
    used = {x for n in g.graph.node for x in n.input} | {o.name for o in g.graph.output}
    keep = [t for t in g.graph.initializer if t.name in used]
    del g.graph.initializer[:]
    g.graph.initializer.extend(keep)


def _check_structure(model) -> None:
    """What QDQ consumers rely on: int8 weights only, int32 biases, every conv reading a DQ."""
    g = OnnxGraph(model)
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
    g = OnnxGraph(proto)
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
