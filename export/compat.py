"""Check a TFLite file's I/O contract against a reference file or the contract a model implies.

The reference is e.g. ST's own int8 TFLite; the implied contract serves the sizes and classes ST
ships no file for.

    python -m ssd_mnv1.export.compat OURS.tflite REFERENCE.tflite
    python -m ssd_mnv1.export.compat OURS.tflite --expect MODEL          (a .ckpt or .h5)
    python -m ssd_mnv1.export.compat OURS.tflite --size S [--classes C]  (C: a count or names a,b,c; default 1)

**Against a reference**, checked (each difference is one ``DIFFERS:`` line): number of inputs and
outputs; their shapes, shape signatures (ST's files have a dynamic batch, -1, and ST's host
evaluation resizes it to 64) and dtypes; the quantization (scale, zero point) of every integer
input or output; the output order by *content* (offsets and anchors have the same shape, so both
files are run on the same two images at batch 2 and each output is classified as scores, offsets
or anchors); and the absence of custom/Flex ops. Tensor names and the internal op list are
reported as notes only (ST's evaluation code identifies outputs by position).

**Against the expected contract** (``--expect`` / ``--size``): ST's int8 contract
(st_reference.md §1.2) for that input size S and C classes, with NA the anchors of S's graph
(:func:`ssd_mnv1.specs.resolution_spec`): one **uint8** input of shape (1, S, S, 3), batch
signature -1 (ST's) or 1 (the ``--mcu`` variant, a note), quantized with scale 1/127.5 and zero
point 127; three **float32** outputs in ST's order - scores (1, NA, 1+C), offsets (1, NA, 4),
anchors (1, NA, 4), with the input's batch signature - each the DEQUANTIZE of an int8 tensor, the
scores' at scale 1/256, zero point -128 (the offsets' and anchors' scales depend on the model and
are notes); the order checked by content as above (a dynamic-batch file must also run at batch
2); the anchors the file outputs equal to :func:`ssd_mnv1.anchors.generate_anchors` for S within
one step of their int8 quantization; no custom/Flex ops. Class names are not in a TFLite file:
only their count is checked.

Exit status 0 when compatible, 1 otherwise.

The ``--mcu`` variant (static batch 1 for TensorFlow Lite Micro) is recognised: against a
reference with a dynamic batch, its batch of 1 is reported as that variant's one difference (a
``batch:`` note) and everything else is checked as usual. With tflite-micro installed (the ``mcu``
extra) each file is also loaded in TFLite Micro and the result noted (arena bytes, or the op TFLM
has no kernel for).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ssd_mnv1.cli import run
from ssd_mnv1.preprocess import normalize

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


def output_roles(outputs: list[np.ndarray]) -> list[str]:
    """Classify each output of one batch: ``anchors`` (4 wide, the same for every image),
    ``scores`` (rows in [0, 1] summing to 1), ``offsets`` (4 wide, image dependent) or ``other``."""
    roles = []
    for out in outputs:
        same_for_all = out.shape[0] > 1 and all(np.array_equal(out[0], o) for o in out[1:])
        if out.shape[-1] == 4 and same_for_all:
            roles.append("anchors")
        elif out.min() >= 0 and out.max() <= 1 and np.allclose(out.sum(-1), 1, atol=0.02):
            roles.append("scores")
        elif out.shape[-1] == 4:
            roles.append("offsets")
        else:
            roles.append("other")
    return roles


def read_contract(path: str | os.PathLike) -> Contract:
    from ssd_mnv1.runners import make_interpreter

    from .tflite_edit import op_list

    it = make_interpreter(path, builtin=True)

    def describe(d):
        scale, zp = d["quantization"]
        return {"name": d["name"], "shape": [int(s) for s in d["shape"]],
                "shape_signature": [int(s) for s in d.get("shape_signature", d["shape"])],
                "dtype": d["dtype"].__name__, "scale": float(scale), "zero_point": int(zp)}

    contract = Contract([describe(d) for d in it.get_input_details()],
                        [describe(d) for d in it.get_output_details()], op_list(path))
    if len(contract.inputs) == 1:
        contract.roles, contract.probe_error = _probe(path)
    contract.tflm = _tflm_status(path)
    return contract


def _tflm_status(path) -> str | None:
    """Whether TensorFlow Lite Micro loads the file (and its arena bytes), or why not."""
    from ssd_mnv1.tflm import TFLMRunner, TFLMUnsupportedModel, tflm_available

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

    it = make_interpreter(path, builtin=True)
    inp = it.get_input_details()[0]
    x = _probe_input(inp, PROBE_BATCH)
    try:
        it.resize_tensor_input(inp["index"], list(x.shape))
        it.allocate_tensors()
        it.set_tensor(inp["index"], x)
        it.invoke()
        return output_roles([it.get_tensor(d["index"]) for d in it.get_output_details()]), None
    except (RuntimeError, ValueError) as exc:
        error = " ".join(str(exc).split())[:200]
    it = make_interpreter(path, builtin=True)
    it.allocate_tensors()
    per_image = []
    for image in x:
        it.set_tensor(inp["index"], image[None])
        it.invoke()
        per_image.append([it.get_tensor(d["index"]) for d in it.get_output_details()])
    return output_roles([np.concatenate(outs) for outs in zip(*per_image)]), error


def _ops_and_tensors(path):
    from ssd_mnv1.runners import make_interpreter

    it = make_interpreter(path, builtin=True)
    return it._get_ops_details(), {t["index"]: t for t in it.get_tensor_details()}


def weight_quantization(path: str | os.PathLike) -> dict[str, int]:
    """How the CONV_2D / DEPTHWISE_CONV_2D weights are quantized, from the interpreter's tensor
    details: counts of ``per-channel`` (several scales) and ``per-tensor`` (one scale) int8 weight
    tensors, and ``float`` for unquantized ones."""
    ops, tensors = _ops_and_tensors(path)
    counts = {"per-channel": 0, "per-tensor": 0, "float": 0}
    for op in ops:
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            t = tensors[int(op["inputs"][1])]
            scales = t["quantization_parameters"]["scales"]
            if t["dtype"] not in (np.int8, np.uint8) or len(scales) == 0:
                counts["float"] += 1
            else:
                counts["per-channel" if len(scales) > 1 else "per-tensor"] += 1
    return counts


def output_quantization(path: str | os.PathLike) -> list[tuple[float, int] | None]:
    """Per output, the (scale, zero point) of the integer tensor its DEQUANTIZE reads, else None."""
    ops, tensors = _ops_and_tensors(path)
    producer = {int(o): op for op in ops for o in op["outputs"]}
    from ssd_mnv1.runners import make_interpreter

    result = []
    for d in make_interpreter(path, builtin=True).get_output_details():
        op = producer.get(int(d["index"]))
        if op is None or op["op_name"] != "DEQUANTIZE":
            result.append(None)
            continue
        scale, zp = tensors[int(op["inputs"][0])]["quantization"]
        result.append((float(scale), int(zp)))
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


#: ST's int8 score output: the softmax at scale 1/256, zero point -128 (st_reference.md §1.2).
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
    want = {"scores": [1, na, 1 + c], "offsets": [1, na, 4], "anchors": [1, na, 4]}
    if len(ours.outputs) != 3:
        diffs.append(f"outputs: {len(ours.outputs)} vs expected 3 (scores, offsets, anchors)")
    quant = output_quantization(path) if len(ours.outputs) == 3 else [None] * len(ours.outputs)
    for i, (d, role, q) in enumerate(zip(ours.outputs, want, quant)):
        where = f"output {i} ('{d['name']}', expected {role})"
        if d["shape"] != want[role]:
            diffs.append(f"{where}: shape {d['shape']} vs expected {want[role]} ({expected.describe()}"
                         + (f": 1 + {c} score columns" if role == "scores" else "") + ")")
        if d["shape_signature"][1:] != want[role][1:] and d["shape"][1:] == want[role][1:]:
            diffs.append(f"{where}: shape signature {d['shape_signature']} vs expected {[batch, *want[role][1:]]}")
        if d["dtype"] != "float32":
            diffs.append(f"{where}: dtype {d['dtype']} vs expected float32 (the DEQUANTIZE of an int8 tensor)")
        if q is None:
            diffs.append(f"{where}: not the DEQUANTIZE of an int8 tensor (ST's outputs are)")
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


def _report(diffs: list[str], notes: list[str]) -> None:
    for line in notes:
        print(f"note: {line}")
    for line in diffs:
        print(f"DIFFERS: {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_mnv1.export.compat", description=__doc__.split("\n")[0],
                                     epilog="Give REFERENCE, or --expect MODEL, or --size S [--classes C].")
    parser.add_argument("tflite", help="the exported file")
    parser.add_argument("reference", nargs="?", help="the reference file (e.g. ST's _int8.tflite)")
    parser.add_argument("--expect", metavar="MODEL",
                        help="check against the contract this .ckpt / .h5 implies (its input size and classes)")
    parser.add_argument("--size", type=int, help="check against the contract of this input size (no reference file)")
    parser.add_argument("--classes", help="with --size: number of classes, or their names a,b,c (default 1)")
    args = parser.parse_args(argv)
    modes = [m for m, given in (("REFERENCE", args.reference), ("--expect", args.expect),
                                ("--size", args.size is not None)) if given]
    if len(modes) != 1:
        parser.error(f"give exactly one of REFERENCE, --expect MODEL, --size S (got {', '.join(modes) or 'none'})")
    if args.classes is not None and args.size is None:
        parser.error("--classes goes with --size (--expect reads the classes from the model)")
    if args.reference is None:
        try:
            expected = (expected_from_model(args.expect) if args.expect else
                        expected_from_args(args.size, 1 if args.classes is None else args.classes))
        except ValueError as exc:
            parser.error(str(exc))
        ours = read_contract(args.tflite)
        diffs, notes = compare_expected(args.tflite, ours, expected)
        if ours.roles is not None:
            notes.insert(0, f"outputs by content: {ours.roles}")
        _report(diffs, notes)
        if diffs:
            return 1
        print(f"compatible: {args.tflite} has ST's int8 I/O contract for {expected.describe()}")
        return 0
    ours, ref = read_contract(args.tflite), read_contract(args.reference)
    diffs, notes = compare(ours, ref)
    if ours.roles is not None:
        notes.insert(0, f"outputs by content: {ours.roles}")
    _report(diffs, notes)
    if diffs:
        return 1
    if mcu_variant_of(ours, ref):
        print(f"compatible except for the batch: {args.tflite} (static batch 1, the --mcu variant) has the I/O "
              f"contract of {args.reference} otherwise")
        return 0
    print(f"compatible: {args.tflite} has the I/O contract of {args.reference}")
    return 0


if __name__ == "__main__":
    run(main)
