"""Compare a TFLite file's I/O contract with a reference file (e.g. ST's own int8 TFLite).

    python -m ssd_mnv1.export.compat OURS.tflite REFERENCE.tflite

Checked (each difference is one ``DIFFERS:`` line): number of inputs and outputs; their shapes,
shape signatures (ST's files have a dynamic batch, -1, and ST's host evaluation resizes it to 64)
and dtypes; the quantization (scale, zero point) of every integer input or output; the output
order by *content* (offsets and anchors have the same shape, so both files are run on the same two
images at batch 2 and each output is classified as scores, offsets or anchors); and the absence
of custom/Flex ops. Tensor names and the internal op list are reported as notes only (ST's
evaluation code identifies outputs by position). Exit status 0 when compatible, 1 otherwise.

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_mnv1.export.compat", description=__doc__.split("\n")[0])
    parser.add_argument("tflite", help="the exported file")
    parser.add_argument("reference", help="the reference file (e.g. ST's _int8.tflite)")
    args = parser.parse_args(argv)
    ours, ref = read_contract(args.tflite), read_contract(args.reference)
    diffs, notes = compare(ours, ref)
    if ours.roles is not None:
        notes.insert(0, f"outputs by content: {ours.roles}")
    for line in notes:
        print(f"note: {line}")
    if diffs:
        for line in diffs:
            print(f"DIFFERS: {line}")
        return 1
    if mcu_variant_of(ours, ref):
        print(f"compatible except for the batch: {args.tflite} (static batch 1, the --mcu variant) has the I/O "
              f"contract of {args.reference} otherwise")
        return 0
    print(f"compatible: {args.tflite} has the I/O contract of {args.reference}")
    return 0


if __name__ == "__main__":
    run(main)
