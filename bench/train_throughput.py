"""Training throughput: decoding every image each time vs the decoded-image cache, side by side.

    python bench/train_throughput.py [--data ../shared/data/coco2017_person_train] [--size 224]
        [--batch-size 64] [--steps 8] [--warmup 2] [--rounds 2] [--device cpu|cuda]
        [--workers N] [--threads N]

Runs the real training path (DetectionDataModule with ST's augmentation -> SSDLightningModule ->
Lightning Trainer) with ``data.cache`` off ("decode": JPEG decode + resize + augment per sample)
and on ("cached": augment the cached resized uint8 images), alternating for ``--rounds`` rounds
in one process (best round kept), with the same CPU plan (``ssd_mnv1.cpus.plan_cpus`` unless
``--workers`` / ``--threads`` are given). Data-wait fraction: the time between the end of one
optimizer step and the start of the next (waiting on the DataLoader) over the whole step time.
With ``--device cuda`` it also times the cached path with bf16 autocast and with channels_last.
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from ssd_mnv1.cpus import plan_cpus
from ssd_mnv1.training import DetectionDataModule, SSDLightningModule

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco2017_person_train"


class StepTimer(pl.Callback):
    """Per-step compute time and the data wait before it, after ``warmup`` steps."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.wait: list[float] = []
        self.compute: list[float] = []
        self._end = None
        self._start = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        now = time.perf_counter()
        if self._end is not None and trainer.global_step >= self.warmup:
            self.wait.append(now - self._end)
        self._start = now

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if torch.cuda.is_available() and trainer.accelerator.__class__.__name__.startswith("CUDA"):
            torch.cuda.synchronize()
        now = time.perf_counter()
        if trainer.global_step > self.warmup:
            self.compute.append(now - self._start)
        self._end = now


def measure(args, *, cache: bool, cache_dir: str, precision: str = "32-true", channels_last: bool = False,
            augment_on: str = "loader") -> dict:
    pl.seed_everything(0, verbose=False)
    dm = DetectionDataModule(train=str(args.data), val=str(args.data), input_size=args.size,
                             batch_size=args.batch_size, num_workers=args.workers, torch_threads=args.threads,
                             cache=cache, cache_dir=cache_dir, drop_last=False, augment_on=augment_on)
    module = SSDLightningModule(input_size=args.size, channels_last=channels_last)
    timer = StepTimer(args.warmup)
    trainer = pl.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, precision=precision,
                         max_steps=args.warmup + args.steps, limit_val_batches=0, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, datamodule=dm)
    n = min(len(timer.wait), len(timer.compute))
    wait, compute = sum(timer.wait[:n]), sum(timer.compute[:n])
    return {"images_per_s": n * args.batch_size / (wait + compute), "data_wait": wait / (wait + compute),
            "step_s": statistics.median(timer.compute[:n]), "steps": n, "workers": dm.num_workers,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"dataset (default {DEFAULT_DATA})")
    parser.add_argument("--size", type=int, default=224, choices=(192, 224, 256))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best is kept")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--workers", type=int, help="loader workers (default: the CPU plan's)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the CPU plan's)")
    args = parser.parse_args()
    if not (args.data / "annotations.json").is_file() and not args.data.is_dir():
        raise SystemExit(f"--data {args.data}: no such dataset")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")

    settings = {"decode": {"cache": False}, "cached": {"cache": True},
                "cached, batched augmentation on the device": {"cache": True, "augment_on": "device"}}
    if args.device == "cuda":
        settings["cached, bf16 autocast"] = {"cache": True, "precision": "bf16-mixed"}
        settings["cached, channels_last"] = {"cache": True, "channels_last": True}
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="train_throughput_cache_") as cache_dir:
        for _ in range(args.rounds):
            for name, kw in settings.items():
                row = measure(args, cache_dir=cache_dir, **kw)
                if name not in best or row["images_per_s"] > best[name]["images_per_s"]:
                    best[name] = row

    plan = plan_cpus(args.workers, args.threads, accelerator="cpu" if args.device == "cpu" else "gpu")
    first = best["decode"]
    print(f"\n# Training throughput @ {args.size}x{args.size}, batch {args.batch_size}, {args.device}; "
          f"{plan.describe()}; {args.data}; {args.steps} timed steps, best of {args.rounds} alternating rounds")
    print("| images | images/s | median step compute (s) | data-wait fraction | speed vs decode |")
    print("|---|---|---|---|---|")
    for name, r in best.items():
        print(f"| {name} | {r['images_per_s']:.1f} | {r['step_s']:.3f} | {100 * r['data_wait']:.1f} % | "
              f"{r['images_per_s'] / first['images_per_s']:.2f}x |")
    cached = best["cached"]
    out = {"images_per_s_decode": round(first["images_per_s"], 2),
           "images_per_s_cached": round(cached["images_per_s"], 2),
           "ratio_cached_over_decode": round(cached["images_per_s"] / first["images_per_s"], 3),
           "data_wait_fraction_decode": round(first["data_wait"], 4),
           "data_wait_fraction_cached": round(cached["data_wait"], 4),
           "size": args.size, "batch_size": args.batch_size, "device": args.device,
           "workers": cached["workers"], "threads": cached["threads"]}
    if args.device == "cuda":
        out["images_per_s_cached_bf16"] = round(best["cached, bf16 autocast"]["images_per_s"], 2)
        out["images_per_s_cached_channels_last"] = round(best["cached, channels_last"]["images_per_s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
