"""Compare a TFLite file's I/O contract with a reference file (e.g. ST's own int8 TFLite).

    python -m ssd_mnv1.export.compat OURS.tflite REFERENCE.tflite

Checked: number, order, shapes and dtypes of inputs and outputs, the input quantization (scale and
zero point), and that every output is float32. Tensor names and the internal op list are reported
but do not fail the check (ST's evaluation code identifies outputs by position and shape).
Exit status 0 when compatible, 1 with one line per difference otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field

from ssd_mnv1.cli import run


@dataclass
class Contract:
    inputs: list[dict]
    outputs: list[dict]
    ops: list[str] = field(default_factory=list)


def read_contract(path: str | os.PathLike) -> Contract:
    from ssd_mnv1.runners import make_interpreter

    from .tflite_edit import op_list

    it = make_interpreter(path, builtin=True)

    def describe(d):
        scale, zp = d["quantization"]
        return {"name": d["name"], "shape": [int(s) for s in d["shape"]],
                "shape_signature": [int(s) for s in d.get("shape_signature", d["shape"])],
                "dtype": d["dtype"].__name__, "scale": float(scale), "zero_point": int(zp)}

    return Contract([describe(d) for d in it.get_input_details()],
                    [describe(d) for d in it.get_output_details()], op_list(path))


def compare(ours: Contract, ref: Contract) -> tuple[list[str], list[str]]:
    """(differences that break the contract, informational notes)."""
    diffs, notes = [], []
    for kind, a_list, b_list in (("input", ours.inputs, ref.inputs), ("output", ours.outputs, ref.outputs)):
        if len(a_list) != len(b_list):
            diffs.append(f"{kind}s: {len(a_list)} vs reference {len(b_list)}")
        for i, (a, b) in enumerate(zip(a_list, b_list)):
            where = f"{kind} {i} ('{a['name']}' vs '{b['name']}')"
            if a["shape"] != b["shape"]:
                diffs.append(f"{where}: shape {a['shape']} vs reference {b['shape']}")
            if a["dtype"] != b["dtype"]:
                diffs.append(f"{where}: dtype {a['dtype']} vs reference {b['dtype']}")
            if kind == "input" and (not math.isclose(a["scale"], b["scale"], rel_tol=1e-6)
                                    or a["zero_point"] != b["zero_point"]):
                diffs.append(f"{where}: quantization scale {a['scale']:.9g} zp {a['zero_point']} vs reference "
                             f"scale {b['scale']:.9g} zp {b['zero_point']}")
            if a["shape_signature"] != b["shape_signature"]:
                notes.append(f"{where}: shape signature {a['shape_signature']} vs reference {b['shape_signature']}")
            if a["name"] != b["name"]:
                notes.append(f"{where}: names differ (outputs are identified by position and shape)")
    extra, missing = sorted(set(ours.ops) - set(ref.ops)), sorted(set(ref.ops) - set(ours.ops))
    if extra or missing:
        notes.append(f"op set: ours adds {extra or 'nothing'}, lacks {missing or 'nothing'}")
    flex = [op for op in ours.ops if op.startswith("CUSTOM")]
    if flex:
        diffs.append(f"custom/Flex ops present: {sorted(set(flex))}")
    return diffs, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_mnv1.export.compat", description=__doc__.split("\n")[0])
    parser.add_argument("tflite", help="the exported file")
    parser.add_argument("reference", help="the reference file (e.g. ST's _int8.tflite)")
    args = parser.parse_args(argv)
    diffs, notes = compare(read_contract(args.tflite), read_contract(args.reference))
    for line in notes:
        print(f"note: {line}")
    if diffs:
        for line in diffs:
            print(f"DIFFERS: {line}")
        return 1
    print(f"compatible: {args.tflite} has the I/O contract of {args.reference}")
    return 0


if __name__ == "__main__":
    run(main)
