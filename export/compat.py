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
(docs/st_model.md §1.2) for that input size S and C classes, with NA the anchors of S's graph
(:func:`ssd_mnv1.specs.resolution_spec`): one **uint8** input of shape (1, S, S, 3), batch
signature -1 (ST's) or 1 (the ``--mcu`` variant, a note), quantized with scale 1/127.5 and zero
point 127; three **float32** outputs in ST's order - scores (1, NA, 1+C), offsets (1, NA, 4),
anchors (1, NA, 4), with the input's batch signature - each the DEQUANTIZE of an int8 tensor, the
scores' at scale 1/256, zero point -128 (the offsets' and anchors' scales depend on the model and
are notes); the order checked by content as above (a dynamic-batch file must also run at batch
2); the anchors the file outputs equal to :func:`ssd_mnv1.anchors.generate_anchors` for S within
one step of their int8 quantization; no custom/Flex ops. Class names are not in a TFLite file:
only their count is checked. The ``--int8-outputs`` variant (two **int8** outputs, scores at 1/256
and -128 and offsets, no anchors: the host holds them) passes too, with a note saying so.

Exit status 0 when compatible, 1 otherwise.

The ``--mcu`` variant (static batch 1 for TensorFlow Lite Micro) is recognised: against a
reference with a dynamic batch, its batch of 1 is reported as that variant's one difference (a
``batch:`` note) and everything else is checked as usual. With tflite-micro installed (the ``mcu``
extra) each file is also loaded in TFLite Micro and the result noted (arena bytes, or the op TFLM
has no kernel for).
"""

from __future__ import annotations

import argparse

from ssd_mnv1.cli import run

from .contract import (compare, compare_expected, expected_from_args, expected_from_model, mcu_variant_of,
                       read_contract)


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
        variant = " (the int8-output variant)" if len(ours.outputs) == 2 else ""
        print(f"compatible: {args.tflite} has ST's int8 I/O contract{variant} for {expected.describe()}")
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
