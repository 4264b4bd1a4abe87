"""Per-layer quantization error ledger: where an int8 TFLite file loses ST-AP.

For every quantized layer of the detector, one row with:

* **SQNR** (dB) of the layer's int8 output tensor against the same tensor of the float32 TFLite file
  of the same export, ``10 log10(sum(x_f^2) / sum((x_q - x_f)^2))`` summed over all ledger images
  (``x_q`` dequantized). It is the *accumulated* error at that point of the int8 graph, so it only
  falls along the network; a sudden drop marks a layer that adds much error. Conv rows also carry
  the SQNR of their int8 weights against the float file's (BN-folded) weights.
* **ST-AP cost**: float ST-AP minus the ST-AP of the PyTorch fake-quant model with *only* this
  layer's quantizers on (a conv block's weights and output, a head conv's weights only: its int8
  output is its concatenation's; a standalone activation quantizer),
  every other quantizer off. Ranges: calibrated on the calibration images with float weights (what
  the TFLite converter does for a float model) or, for a QAT model, the model's own. Optionally
  (``leave_one_out``) the **recovery**: ST-AP with every layer quantized but this one, minus ST-AP
  with all quantized; it sees the compounding that single-layer costs miss, at twice the time.
* **local SQNR**: the layer's own noise, its output in the fake-quant model with only it quantized
  against none (PyTorch, the first ``local_images`` images); unlike the accumulated SQNR it does
  not depend on the layers before it.

The int8 file runs under TFLite's builtin kernels (XNNPACK would drop intermediate tensors), fed
raw uint8 pixels as on the device; its ST-AP in the header is from that same run.

Matching tensors. An int8 tensor is paired with the float file's by graph structure (the same
op type reading the paired inputs, with the same output shape; QUANTIZE / DEQUANTIZE pass through),
not by name: from one SavedModel both files name an op's output alike (TF's fused names, e.g.
``model_7/tf.nn.relu6_12/Relu6;model_7/tf.math.add_13/Add;model_7/tf.nn.convolution_7/convolution;Const_59``)
except the input (``tfl.quantize``) and the tensors dequantized into outputs (``PartitionedCall:11``
for ``scores``), but a second onnx2tf run in the process (the int8 source of an equalized export)
numbers its ops on. The names do **not** carry our module paths (onnx2tf names TF ops
``tf.nn.convolution_N`` etc., not after the ONNX nodes), so convs are identified by their weights:
each CONV_2D / DEPTHWISE_CONV_2D of the float file is the :class:`~ssd_mnv1.backbone.ConvBN` whose
BN-folded weight (in TFLite layout; float or on the int8 grid) it holds. The other quantized tensors
follow from the graph: MEAN is ``neck.gap_quant``, the ADD fed by ``neck.lateral.i`` is
``neck.add_quant.i``, the concatenation of the ``head.cls.*`` / ``head.box.*`` outputs is
``head.cls_quant`` / ``head.box_quant``, SOFTMAX is ``scores_quant`` and the input QUANTIZE is
``input_quant``. Tensors that keep their input's quantization (PAD, RESIZE_BILINEAR, RESHAPE) are
listed apart (``other_tensors``).

The PyTorch side (ST-AP costs, local SQNR): :mod:`.quantizer_ablation`; reading the ledger
(Markdown, the bar charts, the files): :mod:`.layer_ledger_report`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .quantizer_ablation import quantizer_costs, sqnr_db

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
#: Ops whose int8 output keeps its input's quantization (no quantizer of their own).
PASS_THROUGH_OPS = ("PAD", "PADV2", "RESIZE_BILINEAR", "RESHAPE", "QUANTIZE")
#: Max |Δ| / max |w| below which a TFLite filter is taken to be a ConvBN's folded weight.
WEIGHT_MATCH_TOL = 1e-3


# ------------------------------------------------------------------------------ TFLite graph


class _Graph:
    """One TFLite file: its ops and tensors from the file (:mod:`ssd_mnv1.tflite_file`), their
    values from an interpreter that keeps every tensor."""

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        from ssd_mnv1.runners import make_interpreter
        from ssd_mnv1.tflite_file import read

        self.path = Path(path)
        self.file = read(self.path)  # one error naming a missing or corrupt file
        make_interpreter(self.path)  # its clear errors for a file LiteRT cannot load
        try:
            from ai_edge_litert import interpreter as litert
        except ImportError:  # pragma: no cover - the export extra installs ai-edge-litert
            import tensorflow as tf

            litert = tf.lite
        # Builtin kernels: XNNPACK would fuse ops and drop their intermediate tensors.
        self.interpreter = litert.Interpreter(
            model_path=str(self.path), num_threads=num_threads, experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.interpreter.allocate_tensors()
        graph = self.file.main
        self.tensors, self.ops, self.inputs = graph.tensors, graph.operators, graph.inputs
        self.producer = graph.producers()
        self.consumers = graph.consumers()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()

    def name(self, index: int) -> str:
        return self.tensors[index].name

    def shape(self, index: int) -> tuple:
        return self.tensors[index].shape

    def constant(self, index: int) -> np.ndarray:
        return np.array(self.file.constant(index))

    def feed(self, image: np.ndarray) -> None:
        """Run one image, its raw pixels as the device feeds them."""
        from ssd_mnv1.runners import prepare_quantized_input

        try:
            x = prepare_quantized_input(image, self.input["dtype"], self.input["quantization"], "raw")
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from None
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()

    def value(self, index: int) -> np.ndarray:
        """A tensor of the last run as float (dequantized when integer)."""
        t = self.tensors[index]
        x = self.interpreter.get_tensor(index)
        if t.dtype in (np.int8, np.uint8, np.int16, np.int32):
            scale, zp = t.quantization.per_tensor or (0.0, 0)
            return (x.astype(np.float64) - zp) * scale
        return x.astype(np.float64)

    def quantized_filter(self, index: int) -> tuple[np.ndarray, int]:
        """A conv filter dequantized (per-channel scales along their axis), and its scale count."""
        q = self.tensors[index].quantization
        scales, zps, axis = q.scales, q.zero_points, q.axis
        x = self.constant(index).astype(np.float64)
        if len(scales) == 0:
            return x, 0
        shape = [1] * x.ndim
        shape[axis] = -1
        if len(scales) == 1:
            return (x - zps[0]) * scales[0], 1
        return (x - zps.reshape(shape)) * scales.reshape(shape), len(scales)


def _tflite_layout(weight: torch.Tensor, depthwise: bool) -> np.ndarray:
    """A torch conv weight (O, I, H, W) in TFLite's layout: (O, H, W, I), depthwise (1, H, W, O)."""
    w = weight.detach().float().cpu()
    return (w.permute(1, 2, 3, 0) if depthwise else w.permute(0, 2, 3, 1)).numpy()


def _conv_weights(model) -> dict[str, list[np.ndarray]]:
    """Module path -> BN-folded weight in TFLite layout: float, and on the int8 grid for a QAT model
    (a QAT checkpoint's export goes through ``to_float``; a calibrated float model's does not)."""
    from ssd_mnv1.layers import ConvBN

    out = {}
    with torch.no_grad():
        for path, m in model.named_modules():
            if isinstance(m, ConvBN):
                weight, _ = m.folded_weight_and_bias()
                out[path] = [_tflite_layout(weight, m.conv.groups > 1)]
                if m.weight_quant is not None:
                    enabled, m.weight_quant.enabled = m.weight_quant.enabled, True
                    out[path].append(_tflite_layout(m.weight_quant(weight), m.conv.groups > 1))
                    m.weight_quant.enabled = enabled
    return out


def _trace_back(graph: _Graph, index: int, module_of: dict[int, str]) -> str | None:
    """The module of the nearest producer of ``index`` through pass-through ops (PAD, RESHAPE...)."""
    seen = set()
    while index not in module_of:
        op = graph.producer.get(index)
        if op is None or op.name not in PASS_THROUGH_OPS or index in seen:
            return None
        seen.add(index)
        index = op.inputs[0]
    return module_of[index]


@dataclass
class TensorMatch:
    """One int8 tensor of the int8 file and the same tensor of the float file."""

    int8_index: int
    fp32_index: int
    tensor: str
    op: str
    module: str | None = None  # the layer whose quantizer this tensor is (None: keeps its input's)
    follows: str | None = None  # for pass-through tensors: the layer they come from
    int8_filter: int | None = None
    fp32_filter: int | None = None


def _activations(g: _Graph, op, graph_inputs: set[int]) -> list[int]:
    """An op's non-constant inputs (produced by an op or fed), in order."""
    return [i for i in op.inputs if i >= 0 and (i in g.producer or i in graph_inputs)]


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def pair_tensors(q: _Graph, f: _Graph) -> dict[int, int]:
    """int8 file tensor -> the same tensor of the float file, by graph structure, not by name.

    Walks the int8 graph from its input: an op is paired with the float op of the same type that
    reads the paired inputs and has the same output shape (among convs reading the same tensor,
    the one whose float filter is nearest the int8 one); QUANTIZE / DEQUANTIZE pass the pairing
    through. Names would do for two files converted from one SavedModel, but a second onnx2tf run
    in the same process (the int8 source of an equalized, bias-corrected export) numbers its ops on.
    """
    q_in, f_in = set(q.inputs), set(f.inputs)
    if len(q_in) != 1 or len(f_in) != 1:
        raise ValueError(f"expected one input in {q.path} and {f.path}, got {len(q_in)} and {len(f_in)}")
    pairs = {next(iter(q_in)): next(iter(f_in))}
    f_by_inputs: dict[tuple, list] = {}
    for op in f.ops:
        f_by_inputs.setdefault((op.name, tuple(_activations(f, op, f_in))), []).append(op)
    used: set[int] = set()
    for op in q.ops:
        ins = _activations(q, op, q_in)
        if any(i not in pairs for i in ins):
            continue
        outs = list(op.outputs)
        if op.name in ("QUANTIZE", "DEQUANTIZE") and len(ins) == 1:
            pairs[outs[0]] = pairs[ins[0]]
            continue
        candidates = [g for g in f_by_inputs.get((op.name, tuple(pairs[i] for i in ins)), [])
                      if g.index not in used and len(g.outputs) == len(outs)
                      and all(q.shape(a)[1:] == f.shape(b)[1:] for a, b in zip(outs, g.outputs))]
        if not candidates:
            continue
        if op.name in CONV_OPS and len(candidates) > 1:
            w = q.quantized_filter(op.inputs[1])[0]
            candidates = sorted(candidates, key=lambda g: _relative_error(w, f.constant(g.inputs[1]))
                                if f.shape(g.inputs[1]) == w.shape else math.inf)
        used.add(candidates[0].index)
        pairs.update(zip(outs, candidates[0].outputs))
    return pairs


def match_tensors(model, q: _Graph, f: _Graph) -> list[TensorMatch]:
    """Every int8 activation tensor of ``q`` (produced by an op) with its float twin in ``f`` and,
    where it is a quantizer's output, the module path of that quantizer (see the module docstring)."""
    graph_inputs = set(q.inputs)
    pairs = pair_tensors(q, f)
    matches: list[TensorMatch] = []
    for op in q.ops:
        name = op.name
        for o in op.outputs:
            if q.tensors[o].dtype != np.int8 or name == "TILE" or o not in pairs:  # TILE: the anchors
                continue
            matches.append(TensorMatch(o, pairs[o], q.name(o), name))
            if name in CONV_OPS:
                matches[-1].int8_filter = op.inputs[1]
                matches[-1].fp32_filter = f.producer[pairs[o]].inputs[1]

    # Convs: by their weights (the float file holds the BN-folded weights: float, or on the int8
    # grid for a QAT model's export, so both are tried).
    free = _conv_weights(model)
    for m in (m for m in matches if m.op in CONV_OPS):
        w = f.constant(m.fp32_filter).astype(np.float32)
        best, err = None, math.inf
        for path, refs in free.items():
            if refs[0].shape == w.shape:
                e = min(_relative_error(w, ref) for ref in refs)
                if e < err:
                    best, err = path, e
        if best is None or err > WEIGHT_MATCH_TOL:
            raise ValueError(f"{f.path}: conv '{m.tensor}' {w.shape} matches no layer of the model "
                             f"(closest {best}, relative error {err:.2e}); are the files exported from it?")
        m.module = best
        del free[best]
    if free:
        raise ValueError(f"layers {sorted(free)} have no conv in {f.path}; are the files exported from this model?")

    module_of = {m.int8_index: m.module for m in matches if m.module}
    for m in matches:
        op = q.producer[m.int8_index]
        if m.op == "QUANTIZE" and op.inputs[0] in graph_inputs:
            m.module = "input_quant"
        elif m.op == "MEAN":
            m.module = "neck.gap_quant"
        elif m.op == "SOFTMAX":
            m.module = "scores_quant"
        elif m.op == "ADD":
            lateral = [p for p in (_trace_back(q, i, module_of) for i in op.inputs)
                       if p and p.startswith("neck.lateral.")]
            if lateral:
                m.module = "neck.add_quant." + lateral[0].rsplit(".", 1)[1]
        elif m.op == "CONCATENATION":
            heads = {p.rsplit(".", 1)[0] for p in (_trace_back(q, i, module_of) for i in op.inputs)
                     if p and p.startswith(("head.cls.", "head.box."))}
            if len(heads) == 1:
                m.module = heads.pop() + "_quant"
        if m.module:
            module_of[m.int8_index] = m.module
        elif m.op in PASS_THROUGH_OPS:
            m.follows = _trace_back(q, op.inputs[0], module_of)
    return matches


# ------------------------------------------------------------------------------------- SQNR


class _PairRunner:
    """Runs the int8 and the float file on the same images, sums each matched tensor's signal and
    noise energy, and returns the int8 file's outputs (the float ones are kept for a replay)."""

    def __init__(self, q: _Graph, f: _Graph, matches: list[TensorMatch], progress=None):
        from ssd_mnv1.runners import identify_outputs

        self.q, self.f, self.matches, self.progress = q, f, matches, progress
        self.identify = identify_outputs
        self.name, self.input_size = "tflite-int8", int(q.input["shape"][1])
        self.signal = np.zeros(len(matches))
        self.noise = np.zeros(len(matches))
        self.float_outputs: list[tuple] = []

    def __call__(self, images: np.ndarray):
        q_outs, f_outs = [], []
        for image in images:
            self.q.feed(image)
            self.f.feed(image)
            for k, m in enumerate(self.matches):
                xf = self.f.value(m.fp32_index)
                xq = self.q.value(m.int8_index)
                self.signal[k] += float(np.square(xf).sum())
                self.noise[k] += float(np.square(xq - xf).sum())
            q_outs.append([self.q.interpreter.get_tensor(o["index"]).astype(np.float32) for o in self.q.outputs])
            f_outs.append([self.f.interpreter.get_tensor(o["index"]).astype(np.float32) for o in self.f.outputs])
            if self.progress is not None:
                self.progress.update(1)
        cat = lambda outs, n: [np.concatenate([p[k] for p in outs]) for k in range(n)]  # noqa: E731
        self.float_outputs.append(self.identify(cat(f_outs, len(self.f.outputs)), self.input_size))
        return self.identify(cat(q_outs, len(self.q.outputs)), self.input_size)

    def sqnr(self) -> list[float]:
        return [sqnr_db(s, n) for s, n in zip(self.signal, self.noise)]


class _Replay:
    """Returns recorded outputs batch by batch (to evaluate the float file from the same run)."""

    def __init__(self, outputs: list[tuple], name: str, input_size: int):
        self.outputs, self.name, self.input_size = list(outputs), name, input_size

    def __call__(self, images):
        return self.outputs.pop(0)


def weight_sqnr(q: _Graph, f: _Graph, m: TensorMatch) -> tuple[float, int]:
    """SQNR (dB) of a conv's int8 filter against the float file's, and its number of scales."""
    wq, n_scales = q.quantized_filter(m.int8_filter)
    wf = f.constant(m.fp32_filter).astype(np.float64)
    return sqnr_db(float(np.square(wf).sum()), float(np.square(wq - wf).sum())), n_scales


# ---------------------------------------------------------------------------------- ledger


def _granularity_of_file(q: _Graph) -> bool:
    """Whether the int8 file's conv weights are per-tensor (one scale each)."""
    counts = [len(q.tensors[op.inputs[1]].quantization.scales) for op in q.ops if op.name in CONV_OPS]
    return bool(counts) and max(counts) <= 1


def build_layer_ledger(model, int8_tflite: str | os.PathLike, fp32_tflite: str | os.PathLike,
                       data: str | os.PathLike, *, calib_images=None, calib_count: int = 100,
                       per_tensor: bool | None = None, limit: int | None = None, leave_one_out: bool = False,
                       local_images: int = 32, progress: bool = True, num_threads: int | None = None) -> dict:
    """The per-layer ledger of ``int8_tflite`` (see the module docstring), worst layer first.

    ``model``: the detector both files were exported from (a path to a ``.ckpt`` / ``.h5``, or the
    model): float, or QAT (a checkpoint with ``hyper_parameters['qat']``: its own ranges are used).
    ``calib_images``: for a float model, the calibration images (a folder, read with
    :func:`~ssd_mnv1.quantization.calibration.calibration_images` and ``calib_count``, or its
    list of NHWC [-1, 1] arrays). ``per_tensor``: weight granularity of the fake-quant model;
    default: the int8 file's. ``data``: the evaluation dataset; ``limit``: its first N images.
    ``leave_one_out``: also the ST-AP with every layer quantized but one (doubles the time).
    ``local_images``: images for each layer's local SQNR (PyTorch, only that layer quantized).
    """
    from ssd_mnv1.progress import progress as progress_bar

    from ssd_mnv1.data import open_dataset
    from ssd_mnv1.evaluation import evaluate, resize_all
    from ssd_mnv1.loading import load_model
    from ssd_mnv1.quantization import is_qat
    from ssd_mnv1.quantization.calibration import calibration_images, int8_simulation
    from ssd_mnv1.quantization.qat import per_tensor_weights

    t_start = time.perf_counter()
    model_name = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    was_training = model.training
    model.eval()
    q, f = _Graph(int8_tflite, num_threads), _Graph(fp32_tflite, num_threads)
    if q.input["dtype"] == np.float32 or f.input["dtype"] != np.float32:
        raise ValueError(f"expected an int8 file and a float32 file, got {q.path} ({q.input['dtype'].__name__} "
                         f"input) and {f.path} ({f.input['dtype'].__name__} input)")
    size = model.input_size
    if int(q.input["shape"][1]) != size or int(f.input["shape"][1]) != size:
        raise ValueError(f"the model's input is {size}x{size} but the files' are {q.input['shape'][1:3]} "
                         f"and {f.input['shape'][1:3]}")
    file_per_tensor = _granularity_of_file(q)
    if per_tensor is None:
        per_tensor = file_per_tensor
    elif per_tensor != file_per_tensor:
        raise ValueError(f"per_tensor={per_tensor} but {q.path} has "
                         f"{'per-tensor' if file_per_tensor else 'per-channel'} weights")

    # Fake-quant model: the QAT model itself, or the float one calibrated as the converter does.
    if is_qat(model):
        if per_tensor_weights(model) != per_tensor:
            kind = lambda pt: "per-tensor" if pt else "per-channel"  # noqa: E731
            raise ValueError(f"the QAT model's weights are {kind(per_tensor_weights(model))} but "
                             f"{q.path}'s are {kind(per_tensor)}")
        qat, ranges = model, "the fake-quant model's own"
    else:
        if calib_images is None:
            raise ValueError("a float model needs calib_images (the export's calibration images)")
        if isinstance(calib_images, (str, os.PathLike)):
            calib_images = calibration_images(calib_images, size, calib_count)
        qat = int8_simulation(model, calib_images, per_tensor)
        ranges = f"calibrated on {len(calib_images)} images (float weights)"
    qat.eval()

    matches = match_tensors(qat if is_qat(model) else model, q, f)
    dataset = open_dataset(data, class_names=model.class_names)  # ST-AP: the mean over the model's classes
    images = resize_all(dataset, size, progress=False, limit=limit)

    t0 = time.perf_counter()
    bar = progress_bar(total=len(images), desc="SQNR int8 vs float32 TFLite", unit="img", disable=not progress)
    pair = _PairRunner(q, f, matches, bar)
    int8_ap = evaluate(pair, dataset, ("st20",), images=images, batch_size=16, progress=False).st_ap["st20"]
    bar.close()
    fp32_ap = evaluate(_Replay(pair.float_outputs, "tflite-fp32", size), dataset, ("st20",), images=images,
                       batch_size=16, progress=False).st_ap["st20"]
    sqnr = pair.sqnr()
    t_sqnr = time.perf_counter() - t0

    t0 = time.perf_counter()
    costs = quantizer_costs(qat, dataset, images, leave_one_out=leave_one_out, local_images=local_images,
                            progress=progress)
    t_cost = time.perf_counter() - t0

    by_module = {m.module: (m, s) for m, s in zip(matches, sqnr) if m.module}
    rows = []
    for path, kind in costs["kinds"].items():
        m, s = by_module.get(path, (None, None))
        row = {"module": path, "kind": kind, "tensor": m.tensor if m else None,
               "tensor_index": m.int8_index if m else None, "op": m.op if m else None,
               "sqnr_db": _round(s), "local_sqnr_db": _round(costs["local_sqnr"][path]),
               "weight_granularity": None, "weight_sqnr_db": None,
               "st_ap_alone": costs["alone"][path],
               "st_ap_cost": round(costs["float"] - costs["alone"][path], 4)}
        if leave_one_out:
            row["st_ap_without"] = costs["without"][path]
            row["st_ap_recovery"] = round(costs["without"][path] - costs["all"], 4)
        if m is not None and m.op in CONV_OPS:
            ws, n_scales = weight_sqnr(q, f, m)
            row["weight_granularity"] = "per-tensor" if n_scales <= 1 else "per-channel"
            row["weight_sqnr_db"] = _round(ws)
        rows.append(row)
    rows.sort(key=lambda r: (-r["st_ap_cost"], _sort_sqnr(r["sqnr_db"])))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    model.train(was_training)
    others = [{"tensor": m.tensor, "tensor_index": m.int8_index, "op": m.op, "follows": m.follows,
               "sqnr_db": _round(s)} for m, s in zip(matches, sqnr) if not m.module]
    return {
        "model": model_name, "int8_tflite": str(int8_tflite), "fp32_tflite": str(fp32_tflite),
        "data": str(data), "images": len(images), "local_sqnr_images": min(local_images, len(images)),
        "input_size": size,
        "weight_granularity": "per-tensor" if per_tensor else "per-channel",
        "fake_quant_ranges": ranges,
        "st_ap": {"pytorch_float": costs["float"], "pytorch_fake_quant_all": costs["all"],
                  "tflite_fp32": fp32_ap, "tflite_int8": int8_ap},
        "layers": rows, "other_tensors": others,
        "timings_s": {"sqnr": round(t_sqnr, 1), "st_ap_costs": round(t_cost, 1),
                      "total": round(time.perf_counter() - t_start, 1)},
    }


def _round(x):
    if x is None:
        return None
    if math.isinf(x):  # JSON has no infinity: a lossless tensor gets a large finite number
        return 999.0 if x > 0 else -999.0
    return round(float(x), 3)


def _sort_sqnr(x):
    return math.inf if x is None else x
