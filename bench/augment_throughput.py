"""Augmentation throughput: per-image CPU ops (what the DataLoader workers run) against
BatchAugmentation on one batch, side by side in one process.

    python bench/augment_throughput.py [--device cpu|cuda] [--size 224] [--batch-size 64]
        [--rounds 5] [--warmup 1] [--threads N]

Per-image: ``build_transforms(Augmentation())`` on each sample of the batch with one order seed
per batch, then ``x * 2 - 1`` (DetectionSamples). Batched: ``BatchAugmentation(Augmentation())`` on
the uint8 batch already on ``--device`` (as in ``on_after_batch_transfer``), synchronized per round.
Both on the same generated person images. Prints a markdown table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torchvision import tv_tensors

from ssd_mnv1.training.augment import Augmentation, build_transforms
from ssd_mnv1.training.batch_augment import BatchAugmentation
from ssd_mnv1.training.synthetic import SyntheticPersons


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_image_round(transforms, images: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor],
                    seed: int) -> torch.Tensor:
    """One batch through the per-image pipeline, as DetectionSamples + DetectionCollate do it."""
    size = images.shape[-1]
    out = []
    for img, b, lab in zip(images, boxes, labels):
        sample = transforms({"image": tv_tensors.Image(img),
                             "boxes": tv_tensors.BoundingBoxes(b * size, format="XYXY", canvas_size=(size, size)),
                             "labels": lab}, seed)
        out.append(sample["image"].as_subclass(torch.Tensor) * 2.0 - 1.0)
    return torch.stack(out)


def time_rounds(fn, rounds: int, warmup: int, device: torch.device) -> list[float]:
    times = []
    for r in range(warmup + rounds):
        _sync(device)
        t = time.perf_counter()
        fn(r)
        _sync(device)
        if r >= warmup:
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n, size = args.batch_size, args.size

    ds = SyntheticPersons(n, seed=0, size=size)
    images = torch.stack([torch.tensor(ds[i][0]).permute(2, 0, 1) for i in range(n)])
    boxes = [torch.from_numpy(ds.records[i].boxes) for i in range(n)]
    labels = [torch.from_numpy(ds.records[i].labels) for i in range(n)]

    cfg = Augmentation()
    transforms, batched = build_transforms(cfg), BatchAugmentation(cfg)
    torch.manual_seed(0)
    per_image = time_rounds(lambda r: per_image_round(transforms, images, boxes, labels, r),
                            args.rounds, args.warmup, torch.device("cpu"))
    on_dev = images.to(device), [b.to(device) for b in boxes], [lab.to(device) for lab in labels]
    gen = torch.Generator().manual_seed(0)
    batch = time_rounds(lambda r: batched(*on_dev, generator=gen), args.rounds, args.warmup, device)

    def rate(times: list[float]) -> float:
        return n / statistics.median(times)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    rows = [("per-image (build_transforms, CPU)", per_image), (f"batched (BatchAugmentation, {args.device})", batch)]
    print(f"\nST augmentation, batch {n} at {size}x{size}, {args.rounds} rounds after {args.warmup} warm-up ({name})\n")
    print("| path | median s/batch | min s/batch | images/s |")
    print("|---|---|---|---|")
    for label, times in rows:
        print(f"| {label} | {statistics.median(times):.4f} | {min(times):.4f} | {rate(times):.1f} |")
    print()
    print(json.dumps({"per_image_images_per_s": round(rate(per_image), 2),
                      "batched_images_per_s": round(rate(batch), 2),
                      "ratio_batched_over_per_image": round(rate(batch) / rate(per_image), 3),
                      "device": args.device}))


if __name__ == "__main__":
    main()
