"""ST's int8 I/O contract read from a TFLite file, compared with a reference file or with the
contract a model implies (what ``python -m ssd_mnv1.export.compat`` reports; its docstring lists
every check).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from ssd_mnv1.preprocess import normalize
from ssd_mnv1.tflite_file import read as read_tflite

_FLOATS = ("float32", "float16", "float64")


#: Batch used to run both files when classifying outputs (exercises the dynamic batch too).
PROBE_BATCH = 2


@dataclass
class Contract:
    inputs: list[dict]
    outputs: list[dict]
    ops: list[str] = field(default_factory=list)
    roles: list[str] | None = None  # per output: scores / offsets / anchors / other
    probe_error: str | None = None  # why the file could not be run at PROBE_BATCH
    tflm: str | None = None  # what TensorFlow Lite Micro says of the file (None: tflite-micro not installed)

    @property
    def batch(self) -> set[int]:
        """The batch dimensions of the inputs' and outputs' shape signatures (-1: dynamic)."""
        return {d["shape_signature"][0] for d in self.inputs + self.outputs if d["shape_signature"]}

    @property
    def static_batch(self) -> bool:
        """Batch 1 everywhere: the ``--mcu`` variant."""
        return self.batch == {1}


def _probe_input(detail: dict, batch: int) -> np.ndarray:
    """Two fixed, different images (a gradient and seeded noise) in the input's dtype."""
    shape = [batch, *[int(s) for s in detail["shape"][1:]]]
    grad = np.broadcast_to(np.linspace(0, 255, shape[2], dtype=np.float32)[None, :, None], shape[1:])
    noise = np.random.default_rng(0).integers(0, 256, shape[1:]).astype(np.float32)
    pixels = np.stack([(grad, noise)[i % 2] for i in range(batch)])
    dtype = detail["dtype"]
    if dtype == np.uint8:
        return pixels.astype(np.uint8)
    if dtype == np.int8:
        return (pixels - 128).astype(np.int8)
    return normalize(pixels).astype(dtype)


def read_contract(path: str | os.PathLike) -> Contract:
    """The file's I/O contract as its flatbuffer declares it, the output roles by running it
    (:func:`_probe`) and what TensorFlow Lite Micro says of it."""
    file = read_tflite(path)
    graph = file.main

    def describe(i: int) -> dict:
        t = graph.tensors[i]
        scale, zp = t.quantization.per_tensor or (0.0, 0)  # (0.0, 0): what an interpreter reports
        return {"name": t.name, "shape": list(t.shape), "shape_signature": list(t.signature),
                "dtype": t.dtype.type.__name__ if t.dtype is not None else t.type_name.lower(),
                "scale": scale, "zero_point": zp}

    contract = Contract([describe(i) for i in graph.inputs], [describe(i) for i in graph.outputs],
                        file.operator_names())
    if len(contract.inputs) == 1:
        contract.roles, contract.probe_error = _probe(path)
    contract.tflm = _tflm_status(path)
    return contract


def _tflm_status(path) -> str | None:
    """Whether TensorFlow Lite Micro loads the file (and its arena bytes), or why not."""
    from ssd_mnv1.runners import TFLMRunner, TFLMUnsupportedModel, tflm_available

    if not tflm_available():
        return None
    try:
        runner = TFLMRunner(path)
    except TFLMUnsupportedModel as exc:
        return "cannot load it: " + (f"no kernel for {', '.join(exc.missing_ops)}" if exc.missing_ops else str(exc))
    except ValueError as exc:  # loads, but is not a detector this project runs (e.g. not 4-D input)
        return f"loads it, but: {exc}"
    return f"loads it (arena {runner.arena_report().arena_bytes:,} bytes)"


def _probe(path) -> tuple[list[str] | None, str | None]:
    """(output roles, why batch PROBE_BATCH failed): run at batch PROBE_BATCH, else image by image."""
    from ssd_mnv1.runners import make_interpreter
    from ssd_mnv1.runners.io import float_output, output_roles

    it = make_interpreter(path, builtin=True)
    inp = it.get_input_details()[0]
    x = _probe_input(inp, PROBE_BATCH)
    try:
        it.resize_tensor_input(inp["index"], list(x.shape))
        it.allocate_tensors()
        it.set_tensor(inp["index"], x)
        it.invoke()
        return output_roles([float_output(it.get_tensor(d["index"]), d["quantization"])
                             for d in it.get_output_details()]), None
    except (RuntimeError, ValueError) as exc:
        error = " ".join(str(exc).split())[:200]
    it = make_interpreter(path, builtin=True)
    it.allocate_tensors()
    per_image = []
    for image in x:
        it.set_tensor(inp["index"], image[None])
        it.invoke()
        per_image.append([float_output(it.get_tensor(d["index"]), d["quantization"])
                          for d in it.get_output_details()])
    return output_roles([np.concatenate(outs) for outs in zip(*per_image)]), error


def weight_quantization(path: str | os.PathLike) -> dict[str, int]:
    """How the CONV_2D / DEPTHWISE_CONV_2D weights are quantized, from the file: counts of
    ``per-channel`` (several scales) and ``per-tensor`` (one scale) int8 weight tensors, and
    ``float`` for unquantized ones."""
    graph = read_tflite(path).main
    counts = {"per-channel": 0, "per-tensor": 0, "float": 0}
    for op in graph.operators:
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            t = graph.tensors[op.inputs[1]]
            scales = t.quantization.scales
            if t.dtype not in (np.int8, np.uint8) or len(scales) == 0:
                counts["float"] += 1
            else:
                counts["per-channel" if len(scales) > 1 else "per-tensor"] += 1
    return counts


def output_quantization(path: str | os.PathLike) -> list[tuple[float, int] | None]:
    """Per output, the (scale, zero point) of the integer tensor its DEQUANTIZE reads, else None."""
    graph = read_tflite(path).main
    producer = graph.producers()
    result = []
    for i in graph.outputs:
        op = producer.get(i)
        if op is None or op.name != "DEQUANTIZE":
            result.append(None)
            continue
        result.append(graph.tensors[op.inputs[0]].quantization.per_tensor or (0.0, 0))
    return result


def mcu_variant_of(ours: Contract, ref: Contract) -> bool:
    """``ours`` is the static-batch (``--mcu``) variant of a reference with a dynamic batch."""
    return ours.static_batch and -1 in ref.batch


def compare(ours: Contract, ref: Contract) -> tuple[list[str], list[str]]:
    """(differences that break the contract, informational notes).

    When ``ours`` is the ``--mcu`` variant of a dynamic-batch reference (:func:`mcu_variant_of`),
    its batch (shape signatures 1 vs -1, and not running at batch :data:`PROBE_BATCH`) is one
    ``batch:`` note instead of differences; any other difference is still reported.
    """
    diffs, notes = [], []
    mcu = mcu_variant_of(ours, ref)
    for kind, a_list, b_list in (("input", ours.inputs, ref.inputs), ("output", ours.outputs, ref.outputs)):
        if len(a_list) != len(b_list):
            diffs.append(f"{kind}s: {len(a_list)} vs reference {len(b_list)}")
        for i, (a, b) in enumerate(zip(a_list, b_list)):
            where = f"{kind} {i} ('{a['name']}' vs '{b['name']}')"
            if a["shape"] != b["shape"]:
                diffs.append(f"{where}: shape {a['shape']} vs reference {b['shape']}")
            if a["dtype"] != b["dtype"]:
                diffs.append(f"{where}: dtype {a['dtype']} vs reference {b['dtype']}")
            quantized = a["dtype"] not in _FLOATS or b["dtype"] not in _FLOATS
            if quantized and (not math.isclose(a["scale"], b["scale"], rel_tol=1e-6)
                              or a["zero_point"] != b["zero_point"]):
                diffs.append(f"{where}: quantization scale {a['scale']:.9g} zp {a['zero_point']} vs reference "
                             f"scale {b['scale']:.9g} zp {b['zero_point']}")
            batch_only = (mcu and a["shape_signature"][1:] == b["shape_signature"][1:]
                          and a["shape_signature"][:1] == [1] and b["shape_signature"][:1] == [-1])
            if a["shape_signature"] != b["shape_signature"] and not batch_only:
                diffs.append(f"{where}: shape signature {a['shape_signature']} vs reference {b['shape_signature']} "
                             "(-1 = dynamic batch, which ST's host evaluation resizes)")
            if a["name"] != b["name"]:
                notes.append(f"{where}: names differ (not part of the contract: ST's code indexes tensors by position)")
    if mcu:
        notes.insert(0, "batch: static 1 (the --mcu variant, which TensorFlow Lite Micro loads) where the reference "
                        "has a dynamic batch (-1): every input and output has batch 1 and the file runs one image "
                        "at a time (ST's host evaluation resizes the reference's input to 64 images instead)")
    if ours.probe_error and not ref.probe_error and not mcu:
        diffs.append(f"cannot run at batch {PROBE_BATCH} as the reference can: {ours.probe_error}")
    if ours.roles is not None and ref.roles is not None and ours.roles != ref.roles:
        diffs.append(f"output order by content: {ours.roles} vs reference {ref.roles}")
    extra, missing = sorted(set(ours.ops) - set(ref.ops)), sorted(set(ref.ops) - set(ours.ops))
    if extra or missing:
        notes.append(f"op set: ours adds {extra or 'nothing'}, lacks {missing or 'nothing'}")
    flex = [op for op in ours.ops if op.startswith("CUSTOM")]
    if flex:
        diffs.append(f"custom/Flex ops present: {sorted(set(flex))}")
    if ours.tflm is not None:
        notes.append(f"TensorFlow Lite Micro {ours.tflm}; on the reference, {ref.tflm}")
    return diffs, notes


@dataclass(frozen=True)
class Expected:
    """The I/O contract a model implies: ST's int8 contract at ``input_size`` with ``num_classes``."""

    input_size: int
    num_classes: int
    #: What the expectation was read from (a model file, or the command line).
    source: str = ""

    @property
    def spec(self):
        from ssd_mnv1.specs import resolution_spec

        return resolution_spec(self.input_size)

    @property
    def num_anchors(self) -> int:
        return self.spec.num_anchors

    def describe(self) -> str:
        return (f"{self.input_size}x{self.input_size} input, {self.num_anchors} anchors, {self.num_classes} "
                f"class{'es' if self.num_classes != 1 else ''}{f' ({self.source})' if self.source else ''}")


def expected_from_model(path: str | os.PathLike) -> Expected:
    """The contract of the model in a ``.ckpt`` / ``.h5`` (its input size and number of classes)."""
    from ssd_mnv1.loading import load_model

    model = load_model(path)
    names = getattr(model, "class_names", None)
    what = f"{path}" + (f": classes {', '.join(names)}" if names else "")
    return Expected(int(model.input_size), int(model.num_classes), what)


def expected_from_args(size: int, classes: str | int = 1) -> Expected:
    """``--size S --classes C``: C a count, or comma-separated class names (their count)."""
    from ssd_mnv1.specs import resolution_spec

    resolution_spec(size)  # a ValueError naming the supported sizes
    text = str(classes).strip()
    if text.isdigit():
        count, what = int(text), f"--size {size} --classes {text}"
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
        count, what = len(names), f"--size {size} --classes {','.join(names)}"
    if count < 1:
        raise ValueError(f"--classes must be a positive count or class names, got {classes!r}")
    return Expected(int(size), count, what)


#: ST's int8 score output: the softmax at scale 1/256, zero point -128 (docs/st_model.md §1.2).
SCORE_QUANTIZATION = (1.0 / 256.0, -128)


def _run_one_image(path) -> list[np.ndarray]:
    """The file's outputs for one probe image, batch 1 (in output order)."""
    from ssd_mnv1.runners import make_interpreter

    it = make_interpreter(path, builtin=True)
    inp = it.get_input_details()[0]
    it.allocate_tensors()
    it.set_tensor(inp["index"], _probe_input(inp, 1))
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def compare_expected(path: str | os.PathLike, ours: Contract, expected: Expected) -> tuple[list[str], list[str]]:
    """(differences from the contract ``expected`` implies, notes); see the module docstring."""
    from ssd_mnv1.anchors import generate_anchors
    from ssd_mnv1.preprocess import INPUT_SCALE, INPUT_ZERO_POINT

    diffs, notes = [], []
    s, na, c = expected.input_size, expected.num_anchors, expected.num_classes
    if len(ours.inputs) != 1:
        diffs.append(f"inputs: {len(ours.inputs)} vs expected 1")
    batches = {d["shape_signature"][0] for d in ours.inputs + ours.outputs if d["shape_signature"]}
    if len(batches) > 1 or not batches <= {-1, 1}:
        diffs.append(f"batch: shape signatures have batch {sorted(batches)}; expected -1 everywhere (ST's dynamic "
                     "batch) or 1 everywhere (the --mcu variant)")
    batch = next(iter(batches)) if len(batches) == 1 else -1
    if batches == {1}:
        notes.append("batch: static 1 (the --mcu variant, which TensorFlow Lite Micro loads) where ST's files have a "
                     "dynamic batch (-1)")
    for i, d in enumerate(ours.inputs[:1]):
        where = f"input {i} ('{d['name']}')"
        if d["shape"] != [1, s, s, 3]:
            diffs.append(f"{where}: shape {d['shape']} vs expected {[1, s, s, 3]} ({expected.describe()})")
        if d["shape_signature"][1:] != [s, s, 3] and d["shape"][1:] == [s, s, 3]:
            diffs.append(f"{where}: shape signature {d['shape_signature']} vs expected {[batch, s, s, 3]}")
        if d["dtype"] != "uint8":
            diffs.append(f"{where}: dtype {d['dtype']} vs expected uint8 (raw pixels, ST's int8 contract)")
        if not math.isclose(d["scale"], INPUT_SCALE, rel_tol=1e-6) or d["zero_point"] != INPUT_ZERO_POINT:
            diffs.append(f"{where}: quantization scale {d['scale']:.9g} zp {d['zero_point']} vs expected scale "
                         f"{INPUT_SCALE:.9g} (1/127.5) zp {INPUT_ZERO_POINT}")
    int8_outputs = len(ours.outputs) == 2 and all(d["dtype"] == "int8" for d in ours.outputs)
    want = {"scores": [1, na, 1 + c], "offsets": [1, na, 4], "anchors": [1, na, 4]}
    if int8_outputs:
        del want["anchors"]
        notes.append("outputs: int8 scores and offsets, no anchors output (the --int8-outputs variant: the host "
                     "holds the anchors, ssd_mnv1.anchors.deployed_anchors, the float file's anchors output)")
        quant = [(d["scale"], d["zero_point"]) if d["scale"] else None for d in ours.outputs]
    else:
        if len(ours.outputs) != 3:
            diffs.append(f"outputs: {len(ours.outputs)} vs expected 3 (scores, offsets, anchors), or 2 int8 ones "
                         "(scores, offsets: the --int8-outputs variant)")
        quant = output_quantization(path) if len(ours.outputs) == 3 else [None] * len(ours.outputs)
    for i, (d, role, q) in enumerate(zip(ours.outputs, want, quant)):
        where = f"output {i} ('{d['name']}', expected {role})"
        if d["shape"] != want[role]:
            diffs.append(f"{where}: shape {d['shape']} vs expected {want[role]} ({expected.describe()}"
                         + (f": 1 + {c} score columns" if role == "scores" else "") + ")")
        if d["shape_signature"][1:] != want[role][1:] and d["shape"][1:] == want[role][1:]:
            diffs.append(f"{where}: shape signature {d['shape_signature']} vs expected {[batch, *want[role][1:]]}")
        if d["dtype"] != "float32" and not int8_outputs:
            diffs.append(f"{where}: dtype {d['dtype']} vs expected float32 (the DEQUANTIZE of an int8 tensor)")
        if q is None:
            diffs.append(f"{where}: " + ("an int8 output without a scale and zero point" if int8_outputs else
                                         "not the DEQUANTIZE of an int8 tensor (ST's outputs are)"))
        elif role == "scores" and (not math.isclose(q[0], SCORE_QUANTIZATION[0], rel_tol=1e-6)
                                   or q[1] != SCORE_QUANTIZATION[1]):
            diffs.append(f"{where}: int8 quantization scale {q[0]:.9g} zp {q[1]} vs expected scale "
                         f"{SCORE_QUANTIZATION[0]:.9g} (1/256) zp {SCORE_QUANTIZATION[1]}")
        elif role != "scores":
            notes.append(f"{where}: int8 quantization scale {q[0]:.9g} zp {q[1]} (model-dependent)")
    if ours.probe_error and batch == -1:
        diffs.append(f"cannot run at batch {PROBE_BATCH} although its batch is dynamic: {ours.probe_error}")
    if ours.roles is not None and ours.roles != list(want):
        diffs.append(f"output order by content: {ours.roles} vs expected {list(want)}")
    flex = sorted({op for op in ours.ops if op.startswith("CUSTOM")})
    if flex:
        diffs.append(f"custom/Flex ops present: {flex}")
    if len(ours.inputs) == 1 and len(ours.outputs) == 3 and ours.roles is not None and "anchors" in ours.roles:
        k = ours.roles.index("anchors")
        got = _run_one_image(path)[k][0]
        ref = generate_anchors(expected.spec).numpy()
        step = quant[k][0] if quant[k] is not None else 0.0
        if got.shape != ref.shape:
            diffs.append(f"anchors: the file outputs {got.shape[0]} anchors, expected {ref.shape[0]} "
                         f"({expected.describe()})")
        else:
            worst = float(np.abs(got - ref).max())
            tolerance = step + 1e-6
            if worst > tolerance:
                diffs.append(f"anchors: max |difference| to generate_anchors({s}) is {worst:.6g}, more than one int8 "
                             f"step ({step:.6g}): not this size's anchors")
            else:
                notes.append(f"anchors: equal generate_anchors({s}) within {worst:.6g} (int8 step {step:.6g})")
    if ours.tflm is not None:
        notes.append(f"TensorFlow Lite Micro {ours.tflm}")
    return diffs, notes
