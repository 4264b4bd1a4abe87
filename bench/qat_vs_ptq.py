"""QAT against its own post-training start and against float, per size and weight granularity, with
paired intervals: the numbers behind the README's QAT advice.

    python bench/qat_vs_ptq.py --reference-dir DIR --train TRAIN --val VAL --out WORK
                               [--sizes 192 224 256] [--granularity per-channel per-tensor]
                               [--kernels reference] [--stage all|ptq|qat|compare] [--json OUT]

For each size S and granularity: the PTQ start (``python -m ssd_mnv1.export ST_S.h5 --to tflite-int8
--mcu --equalize [--per-tensor]``: equalized, bias-corrected, calibrated on TRAIN's images, which is
where QAT starts); the QAT recipe (``qat.yaml`` + ``qat_S.yaml``: its distillation objective and its
guard, which holds out ``data.val_split`` of TRAIN and never reads VAL) and the export of its
``last.ckpt``; then ``bench/paired_ap.py`` on VAL for ST's float ``.h5``, each PTQ file and each QAT
file under ``--kernels`` (``reference`` = TensorFlow Lite Micro's arithmetic). A step whose output
exists is not run again (``--stage`` runs one kind of step). Prints a table and one JSON line:
per size, QAT − PTQ and QAT − float per granularity with 95 % intervals, and what each guard kept.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GRANULARITIES = {"per-channel": ([], "_int8_mcu.tflite"), "per-tensor": (["--per-tensor"], "_int8_per_tensor_mcu.tflite")}


def _run(argv: list[str], log: Path) -> None:
    print("$ " + " ".join(argv), file=sys.stderr, flush=True)
    with log.open("w") as f:
        done = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv[:4])} ... failed (exit {done.returncode}); see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-dir", required=True, type=Path)
    parser.add_argument("--train", required=True, type=Path, help="training dataset (its images/ calibrate)")
    parser.add_argument("--val", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[192, 224, 256])
    parser.add_argument("--granularity", nargs="+", default=list(GRANULARITIES), choices=list(GRANULARITIES))
    parser.add_argument("--kernels", default="reference", choices=("reference", "builtin", "xnnpack"))
    parser.add_argument("--stage", default="all", choices=("all", "ptq", "qat", "compare"))
    parser.add_argument("--json")
    args = parser.parse_args()
    py = sys.executable
    calib = str(args.train / "images")
    report = {"kernels": args.kernels, "sizes": {}}
    for size in args.sizes:
        h5 = args.reference_dir / f"st_ssd_mobilenet_v1_025_{size}" / f"st_ssd_mobilenet_v1_025_{size}.h5"
        files = {}
        for gran in args.granularity:
            flags, suffix = GRANULARITIES[gran]
            work = args.out / f"{size}_{gran}"
            work.mkdir(parents=True, exist_ok=True)
            ptq = work / "ptq" / f"{h5.stem}{suffix}"
            if args.stage in ("all", "ptq") and not ptq.is_file():
                _run([py, "-m", "ssd_mnv1.export", str(h5), "--to", "tflite-int8", "--mcu", "--equalize", *flags,
                      "--calib", calib, "--out", str(ptq.parent)], work / "ptq.log")
            ckpt = work / "qat" / "checkpoints" / "last.ckpt"
            if args.stage in ("all", "qat") and not ckpt.is_file():
                _run([py, "-m", "ssd_mnv1.fit", "fit", "--config", "lightning_configs/base.yaml",
                      "--config", "lightning_configs/qat.yaml", "--config", f"lightning_configs/qat_{size}.yaml",
                      "--model.weights", str(h5), "--trainer.callbacks.calibration_images", calib,
                      "--trainer.callbacks.per_tensor", str(gran == "per-tensor").lower(),
                      "--data.train", str(args.train), "--trainer.default_root_dir", str(work / "qat"),
                      "--trainer.logger.init_args.save_dir", str(work / "qat"),
                      "--trainer.enable_progress_bar", "false"], work / "qat.log")
            qat = work / "qat_export" / f"last{suffix}"
            if args.stage in ("all", "qat") and not qat.is_file():
                _run([py, "-m", "ssd_mnv1.export", str(ckpt), "--to", "tflite-int8", "--mcu", *flags,
                      "--calib", calib, "--out", str(qat.parent)], work / "qat_export.log")
            files[gran] = (ptq, qat, ckpt)
        if args.stage not in ("all", "compare"):
            continue
        models = [str(h5)] + [f"{p}@{args.kernels}" for gran in args.granularity for p in files[gran][:2]]
        paired = args.out / f"paired_{size}.json"
        if not paired.is_file():
            _run([py, "bench/paired_ap.py", *models, "--data", str(args.val), "--json", str(paired)],
                 args.out / f"paired_{size}.log")
        result = json.loads(paired.read_text())
        row = {"float": result["models"][0]}
        for k, gran in enumerate(args.granularity):
            ptq_i, qat_i = 1 + 2 * k, 2 + 2 * k
            hp = torch.load(files[gran][2], map_location="cpu", weights_only=False)["hyper_parameters"]
            row[gran] = {"ptq": result["models"][ptq_i], "qat": result["models"][qat_i],
                         "qat_minus_ptq": _diff(result, qat_i, ptq_i), "qat_minus_float": _diff(result, qat_i, 0),
                         "ptq_minus_float": _diff(result, ptq_i, 0), "guard": hp.get("qat_guard"),
                         "objective": _objective(files[gran][2].parents[1] / "qat.log")}
        report["sizes"][size] = row
        for gran in args.granularity:
            r = row[gran]
            print(f"{size} {gran}: QAT - PTQ {_fmt(r['qat_minus_ptq'])}, QAT - float {_fmt(r['qat_minus_float'])}, "
                  f"PTQ - float {_fmt(r['ptq_minus_float'])}; guard kept {(r['guard'] or {}).get('kept')}", flush=True)
    line = json.dumps(report)
    if args.json:
        Path(args.json).write_text(line + "\n")
    print(line)


def _diff(result: dict, a: int, b: int) -> dict:
    """``models[a] - models[b]`` from paired_ap's JSON, whose differences list every pair (i, j),
    i < j, in ``itertools.combinations`` order as models[j] - models[i]."""
    n = len(result["models"])
    pairs = dict(zip(itertools.combinations(range(n), 2), result["differences"]))
    if (b, a) in pairs:
        pair = pairs[(b, a)]
        return {"difference": pair["value"], "low": pair["low"], "high": pair["high"]}
    pair = pairs[(a, b)]
    return {"difference": -pair["value"], "low": -pair["high"], "high": -pair["low"]}


def _objective(log: Path) -> str | None:
    return next((line.strip() for line in log.read_text().splitlines() if line.startswith("QAT guard")), None) \
        if log.is_file() else None


def _fmt(d: dict) -> str:
    return f"{d['difference']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


if __name__ == "__main__":
    main()
