"""Training speed: our trainer against ST's own Keras trainer, same CPU, data, batch, augmentation and threads.

    python bench/trainer_speed.py --st-src ST_SRC --st-python ST_VENV/bin/python \
        [--train ../shared/data/coco2017_person_train] [--backbone IMAGENET_224.h5] [--epochs 8]
        [--rounds 3] [--threads 2] [--workers N] [--batch-size 64] [--out DIR] [--json F]
        [--ours-args "--model.channels_last false ..."]

Both start from the ImageNet backbone at 224 (ST's recipe: batch 64, ST's augmentation, Adam 1e-3)
and train ``--epochs`` epochs of the 167 images (2 steps each). Rounds alternate the order (ours
first, then ST first, ...), one trainer at a time. A trainer's speed is the images of its epochs
after the first (warm-up: ST traces its graph there, ours builds the image cache) over their wall
time, as each trainer times its own epochs (ST: Keras' epoch callbacks in ``bench/st_keras_trainer.py``,
set-up in its docstring; ours: :class:`ssd_mnv1.training.StepProfile`). Ours also reports the median
split of a step (data wait, forward, matching, loss, backward, optimizer, the rest).

The last line is one JSON object: per round the images/s of each, the ratio ours / ST per round and
the median ratio, and our step split.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ssd_mnv1.fileio import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads), PYTHONUNBUFFERED="1")


def run_ours(args, run_dir: Path) -> dict:
    """One Lightning fit with our recipe, no validation, timed by StepProfile; its JSON."""
    profile = run_dir / "profile.json"
    override = {
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": args.epochs, "default_root_dir": str(run_dir),
                    "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                    "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "callbacks": [{"class_path": "ssd_mnv1.training.StepProfile",
                                   "init_args": {"warmup": 2, "path": str(profile)}}]},
        "data": {"batch_size": args.batch_size, "torch_threads": args.threads, "drop_last": True,
                 **({"num_workers": args.workers} if args.workers is not None else {})},
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "override.yaml"
    config.write_text(yaml.safe_dump(override, sort_keys=False))
    cmd = [sys.executable, "-m", "ssd_mnv1.fit", "fit", "--config", str(REPO / "lightning_configs" / "base.yaml"),
           "--config", str(REPO / "lightning_configs" / "st_224.yaml"), "--config", str(config),
           "--model.backbone_weights", str(args.backbone), "--data.train", str(args.train),
           "--data.val", str(args.train), "--seed_everything", "0", *shlex.split(args.ours_args)]
    _run(cmd, run_dir, _env(args.threads))
    return json.loads(profile.read_text())


def run_st(args, run_dir: Path) -> dict:
    """One run of ST's Keras trainer (``bench/st_keras_trainer.py``); its history.json."""
    cmd = [args.st_python, str(REPO / "bench" / "st_keras_trainer.py"), "--st-src", str(args.st_src),
           "--start", "imagenet", "--weights", str(args.backbone), "--data", str(args.train),
           "--epochs", str(args.epochs), "--save-every", str(args.epochs), "--seed", "0", "--lr", "1e-3",
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--out", str(run_dir)]
    _run(cmd, run_dir, _env(args.threads))
    return json.loads((run_dir / "history.json").read_text())


def _run(cmd: list[str], run_dir: Path, env: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "log.txt", "w") as log:
        rc = subprocess.call(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = "\n".join((run_dir / "log.txt").read_text().splitlines()[-15:])
        raise SystemExit(f"error: {' '.join(cmd[:4])} ... failed (exit {rc}); log {run_dir / 'log.txt'}:\n{tail}")


def images_per_second(epoch_seconds: list[float], images_per_epoch: int) -> float:
    """Images per second over the epochs after the first."""
    timed = epoch_seconds[1:]
    if not timed:
        raise SystemExit("error: --epochs must be >= 2 (the first epoch is warm-up)")
    return images_per_epoch * len(timed) / sum(timed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--st-src", required=True, type=Path, help="local copy of ST's stm32ai-modelzoo 2.0.0")
    ap.add_argument("--st-python", required=True, help="python of ST's TF/Keras venv")
    ap.add_argument("--train", type=Path, default=SHARED / "data" / "coco2017_person_train")
    ap.add_argument("--backbone", type=Path, default=SHARED / "reference" / "mobilenet_v1_0.25_224_imagenet.h5")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="our loader workers (default: the CPU plan's)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--ours-args", default="", help="more flags for our fit (e.g. --model.channels_last false)")
    ap.add_argument("--out", type=Path, default=Path("trainer_speed"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    for name in ("train", "backbone", "st_src"):
        if not getattr(args, name).exists():
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: not found")
    n_images = len(json.loads((args.train / "annotations.json").read_text())["images"])
    per_epoch = (n_images // args.batch_size) * args.batch_size

    rounds, splits = [], []
    for r in range(args.rounds):
        order = ("ours", "st") if r % 2 == 0 else ("st", "ours")
        speeds = {}
        for trainer in order:
            t0 = time.perf_counter()
            run_dir = args.out / f"round{r}_{trainer}"
            if trainer == "ours":
                data = run_ours(args, run_dir)
                speeds["ours"] = images_per_second(data["epochs"], per_epoch)
                splits.append(data["summary"])
            else:
                data = run_st(args, run_dir)
                speeds["st"] = images_per_second([e["seconds"] for e in data["history"]], per_epoch)
            print(f"round {r + 1} {trainer}: {speeds[trainer]:.1f} images/s ({time.perf_counter() - t0:.0f} s "
                  "with start-up)", flush=True)
        speeds["ratio"] = speeds["ours"] / speeds["st"]
        rounds.append(speeds)
        print(f"round {r + 1}: ours / ST = {speeds['ratio']:.2f}", flush=True)
    split = {k: round(statistics.median(s[k] for s in splits) * 1000, 1)
             for k in ("data", "forward", "matching", "loss", "backward", "optimizer", "other", "step")}
    result = {"threads": args.threads, "workers": args.workers, "ours_args": args.ours_args,
              "batch_size": args.batch_size, "epochs": args.epochs,
              "images_per_epoch": per_epoch, "rounds": [{k: round(v, 2) for k, v in s.items()} for s in rounds],
              "ratio_median": round(statistics.median(s["ratio"] for s in rounds), 3),
              "ratio_min": round(min(s["ratio"] for s in rounds), 3), "ours_step_split_ms": split}
    print(f"ours / ST images per second: median {result['ratio_median']:.2f} (min {result['ratio_min']:.2f}); "
          f"our step split (ms): {split}")
    line = json.dumps(result)
    if args.json:
        atomic_write_text(args.json, line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
