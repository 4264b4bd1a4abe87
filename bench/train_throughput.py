"""Training throughput: images/s and the fraction of step time spent waiting for data.

    python bench/train_throughput.py [--data ../shared/data/coco2017_person_train] [--size 224]
        [--batch-size 64] [--steps 8] [--warmup 2] [--workers 0 2] [--accelerator cpu|gpu]
        [--precision 32-true|16-mixed|bf16-mixed] [--channels-last]

Runs the real training path (DetectionDataModule with ST's augmentation -> SSDLightningModule ->
Lightning Trainer) once per ``--workers`` value, side by side in one process, and prints images/s,
the data-wait fraction (time between the end of one optimizer step and the start of the next,
i.e. waiting on the DataLoader, over the whole step) and the speed ratio to the first setting.
Without ``--data`` (or when the folder is missing) it trains on generated images.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from ssd_mnv1.training import DetectionDataModule, SSDLightningModule


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
        if trainer.accelerator.__class__.__name__.startswith("CUDA"):
            torch.cuda.synchronize()
        now = time.perf_counter()
        if trainer.global_step > self.warmup:
            self.compute.append(now - self._start)
        self._end = now


def measure(args, workers: int) -> dict:
    pl.seed_everything(0)
    data = str(args.data) if args.data and Path(args.data).exists() else None
    dm = DetectionDataModule(train=data, val=data, synthetic_train=0 if data else 4 * args.batch_size,
                             synthetic_val=0 if data else 8, input_size=args.size, batch_size=args.batch_size,
                             num_workers=workers, drop_last=False)
    module = SSDLightningModule(input_size=args.size, channels_last=args.channels_last)
    timer = StepTimer(args.warmup)
    trainer = pl.Trainer(accelerator=args.accelerator, devices=1, precision=args.precision,
                         max_steps=args.warmup + args.steps, limit_val_batches=0, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, datamodule=dm)
    n = min(len(timer.wait), len(timer.compute))
    wait, compute = sum(timer.wait[:n]), sum(timer.compute[:n])
    return {"workers": workers, "steps": n, "images_per_s": n * args.batch_size / (wait + compute),
            "data_wait": wait / (wait + compute), "step_s": statistics.median(timer.compute[:n]),
            "data": data or "generated images"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                              / "coco2017_person_train"))
    parser.add_argument("--size", type=int, default=224, choices=(192, 224, 256))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    rows = [measure(args, w) for w in args.workers]
    print(f"\ntraining @ {args.size}x{args.size}, batch {args.batch_size}, {args.accelerator}, {args.precision}, "
          f"torch threads {torch.get_num_threads()}, data: {rows[0]['data']}")
    print("| loader workers | steps | images/s | median step compute (s) | data-wait fraction | speed vs first |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['steps']} | {r['images_per_s']:.1f} | {r['step_s']:.2f} | "
              f"{100 * r['data_wait']:.1f} % | {r['images_per_s'] / rows[0]['images_per_s']:.2f}x |")


if __name__ == "__main__":
    main()
