"""Export ST's own .h5 through our importer and exporter, and hold the result against ST's int8 file.

    python bench/export_st_parity.py --reference-dir ../shared/reference \
        --calib ../shared/data/coco2017_person_train/images --data ../shared/data/coco2017_person_val \
        [--sizes 192 224 256] [--per-tensor] [--calib-count 100] [--out DIR]

Why: with the same weights, our int8 file should be a drop-in for ST's (same I/O contract) and at
least as accurate, and our float TFLite should equal PyTorch. For each size this exports
ST's ``<S>`` .h5 (names: ``ssd_mnv1.zoo``) to int8 (calibrated on --calib, never on --data), builds the
export ledger (max |Δ| of every stage to PyTorch float over all --data images), runs the
compatibility check (``python -m ssd_mnv1.export.compat``) against ST's int8 .tflite, evaluates
both int8 files with the project's evaluator on the same decoded images (raw uint8 pixels, as
``python -m ssd_mnv1.evaluate FILE --data DIR`` does), and prints one Markdown table. --per-tensor
adds a per-tensor-weight export (STM32MP25 NPU) per size, checked from the interpreter's tensor
details. Files go to a temporary folder unless --out is given; nothing is written into the repo.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def _kib(path: Path) -> str:
    return f"{path.stat().st_size / 1024:.1f}"


def run_size(size: int, args, out_dir: Path) -> dict:
    from ssd_mnv1.data import open_dataset
    from ssd_mnv1.evaluation import evaluate, resize_all
    from ssd_mnv1.export.contract import compare, read_contract, weight_quantization
    from ssd_mnv1.export.ledger import build_ledger, write_ledger
    from ssd_mnv1.export.pipeline import export
    from ssd_mnv1.export.tflite_edit import op_list
    from ssd_mnv1.runners import TFLiteRunner
    from ssd_mnv1.zoo import st_files

    st = st_files(args.reference_dir, size, must_exist=True)
    h5, st_int8 = st.h5, st.int8_tflite
    t0 = time.perf_counter()
    result = export(h5, out_dir / str(size), "tflite-int8", calib=args.calib, calib_count=args.calib_count,
                    log=lambda *_: None)
    chain_s = time.perf_counter() - t0
    ledger = build_ledger(h5, result, args.data)
    write_ledger(ledger, out_dir / str(size))
    stage = {r["stage"]: r for r in ledger["stages"]}
    ours = result.files["tflite-int8"]
    diffs, _ = compare(read_contract(ours), read_contract(st_int8))

    dataset = open_dataset(args.data)
    images = resize_all(dataset, size, progress=False)

    def st_ap(path: Path) -> float:
        return evaluate(TFLiteRunner(path), dataset, ("st20",), images=images, limit=len(images),
                        progress=False).st_ap["st20"]

    row = {"size": size, "chain_s": chain_s, "fp32_scores": stage["tflite-fp32"]["max_diff_vs_float_scores"],
           "fp32_offsets": stage["tflite-fp32"]["max_diff_vs_float_offsets"], "diffs": diffs,
           "float_ap": stage["pytorch-float"]["st_ap_20"], "ours_ap": stage["tflite-int8"]["st_ap_20"],
           "st_ap": st_ap(st_int8), "ours_kib": _kib(ours), "st_kib": _kib(st_int8), "images": ledger["diff_images"],
           "ops": Counter(op_list(ours)), "weights": weight_quantization(ours)}
    if args.per_tensor:
        pt = export(h5, out_dir / f"{size}_per_tensor", "tflite-int8", calib=args.calib,
                    calib_count=args.calib_count, per_tensor=True, log=lambda *_: None).files["tflite-int8"]
        pt_diffs, _ = compare(read_contract(pt), read_contract(st_int8))
        row.update(pt_ap=st_ap(pt), pt_kib=_kib(pt), pt_diffs=pt_diffs, pt_weights=weight_quantization(pt),
                   pt_ops=Counter(op_list(pt)))
    return row


def _weights(w: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in w.items() if v)


def markdown(rows: list[dict], args) -> str:
    n = rows[0]["images"]
    lines = [f"ST's .h5 → our exporter vs ST's int8 TFLite; ST-AP = st20 (IoU 0.4, 2.0 evaluator) on `{args.data}` "
             f"({n} images, raw uint8 input); calibration: {args.calib_count} images of `{args.calib}`; "
             f"fp32 max |Δ| vs PyTorch float over the same {n} images.", "",
             "| S | fp32 max Δ scores | fp32 max Δ offsets | contract vs ST int8 | ST-AP float (PyTorch) | "
             "ST-AP ours int8 | ST-AP ST int8 | ours − ST | ours KiB | ST KiB | export chain (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        contract = "OK" if not r["diffs"] else "DIFFERS: " + "; ".join(r["diffs"])
        gap = r["ours_ap"] - r["st_ap"]
        lines.append(f"| {r['size']} | {r['fp32_scores']:.2e} | {r['fp32_offsets']:.2e} | {contract} | "
                     f"{r['float_ap']:.2f} | {r['ours_ap']:.2f} | {r['st_ap']:.2f} | {gap:+.2f} | "
                     f"{r['ours_kib']} | {r['st_kib']} | {r['chain_s']:.1f} |")
    if args.per_tensor:
        lines += ["", "| S | weights (per-channel file) | weights (--per-tensor file) | contract (--per-tensor) | "
                  "ST-AP per-channel | ST-AP per-tensor | per-tensor KiB |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            contract = "OK" if not r["pt_diffs"] else "DIFFERS: " + "; ".join(r["pt_diffs"])
            lines.append(f"| {r['size']} | {_weights(r['weights'])} | {_weights(r['pt_weights'])} | {contract} | "
                         f"{r['ours_ap']:.2f} | {r['pt_ap']:.2f} | {r['pt_kib']} |")
    lines += [""]
    for r in rows:
        custom = sorted(op for op in r["ops"] if op.startswith("CUSTOM"))
        lines.append(f"- {r['size']} int8 ops ({sum(r['ops'].values())}; custom/Flex: {custom or 'none'}): "
                     + ", ".join(f"{k} ×{v}" for k, v in sorted(r["ops"].items())))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-dir", type=Path, required=True, help="ST's files (../shared/reference)")
    parser.add_argument("--calib", required=True, help="calibration image folder (train images, never --data)")
    parser.add_argument("--data", required=True, help="evaluation dataset (COCO json + images or ST YOLO layout)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[192, 224, 256], choices=(192, 224, 256))
    parser.add_argument("--calib-count", type=int, default=100)
    parser.add_argument("--per-tensor", action="store_true", help="also export and check per-tensor weights")
    parser.add_argument("--out", type=Path, help="keep the exports and ledgers here (default: a temporary folder)")
    args = parser.parse_args(argv)

    from ssd_mnv1.export.tf_stage import quiet_tensorflow

    quiet_tensorflow()
    with tempfile.TemporaryDirectory(prefix="export_st_parity_") as tmp:
        out = args.out or Path(tmp)
        rows = []
        for size in args.sizes:
            rows.append(run_size(size, args, out))
            print(f"{size}: done", file=sys.stderr, flush=True)
        print(markdown(rows, args), end="")
    ok = all(not r["diffs"] and r["fp32_scores"] <= 1e-4 and r["ours_ap"] >= r["st_ap"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    from ssd_mnv1.cli import run

    run(main)
