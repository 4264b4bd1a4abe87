"""Audit of a QDQ ONNX file (:mod:`.qdq` writes it): its parity with the fake-quant model it came
from, and the evidence that it carries the same quantization as the int8 TFLite file of the same
model (convs paired by their int8 weights; weight, bias, activation, concatenation, softmax and input
scales compared).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ssd_mnv1.model import SSDMobileNetV1
from ssd_mnv1.tflite_file import read as read_tflite

from .onnx_stage import INPUT_NAME
from .qdq import OnnxGraph


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

    g = OnnxGraph(onnx.load(str(path)))
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


def _qdq_after(g: OnnxGraph, op: str) -> tuple[float, int] | None:
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


def _qdq_concat_quant(g: OnnxGraph) -> dict[str, tuple[float, int]]:
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
    file = read_tflite(path)
    graph = file.main

    def quant(i: int) -> tuple[np.ndarray, np.ndarray] | None:
        q = graph.tensors[i].quantization
        if len(q.scales) == 0:
            return None
        return q.scales.astype(np.float64), q.zero_points.astype(np.int64)

    def per_tensor(i: int) -> tuple[float, int] | None:
        q = quant(i)
        return (float(q[0][0]), int(q[1][0])) if q is not None else None

    convs, extra = [], {"concat_outputs": {}, "softmax_output": None}
    readers = graph.consumers()

    def ops_after(op) -> list[str]:
        after = []
        while len(after) < 8 and len(readers.get(op.outputs[0], [])) == 1:
            op = readers[op.outputs[0]][0]
            after.append(op.name)
        return after

    for op in graph.operators:
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            t_in, t_w = op.inputs[0], op.inputs[1]
            t_b = op.inputs[2] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
            raw = file.constant(t_w)
            # CONV_2D: OHWI -> OIHW; DEPTHWISE_CONV_2D: 1HWC -> C1HW.
            weight = raw.transpose(0, 3, 1, 2) if op.name == "CONV_2D" else raw.transpose(3, 0, 1, 2)
            convs.append(_Conv(f"{op.name}#{op.index}", weight, quant(t_w)[0],
                               quant(t_b)[0] if t_b is not None and quant(t_b) else None,
                               per_tensor(t_in), per_tensor(op.outputs[0])))
        elif op.name == "CONCATENATION":
            out = op.outputs[0]
            if per_tensor(out) is not None:
                extra["concat_outputs"][_concat_role(ops_after(op))] = per_tensor(out)
        elif op.name == "SOFTMAX":
            extra["softmax_output"] = per_tensor(op.outputs[0])
    extra["input"] = per_tensor(graph.inputs[0])
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
