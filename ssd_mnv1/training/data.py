"""LightningDataModule over the project's dataset layouts (COCO json, ST's YOLO) or synthetic data.

Training images are stretched to SxS (bilinear, as ST 2.0's training did whatever its config said)
and augmented box-aware; validation images get exactly the evaluation preprocessing (TF nearest,
x/127.5 - 1), so ``val_st_ap`` equals what ``python -m ssd_mnv1.evaluate`` reports for the same
weights. Anchor matching happens in the LightningModule: it is cheap and belongs to the recipe.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset
from torchvision import tv_tensors

from ..preprocess import INTERPOLATIONS, resize, to_tensor
from .augment import Augmentation, OrderedBatchSampler, build_transforms


class DetectionSamples(Dataset):
    """Model-ready samples of a detection dataset: ``{"image", "boxes", "labels", "index", "file",
    "dropped"}``, image float ``(3, S, S)`` in [-1, 1], boxes normalized xyxy, labels 1-based.

    ``samples[i]`` augments with its own random op order; ``samples[(i, seed)]`` (what
    :class:`~ssd_mnv1.training.augment.OrderedBatchSampler` yields) with the order of ``seed``, shared
    by the whole batch as in ST's training generator."""

    def __init__(self, dataset, input_size: int, interpolation: str = "nearest",
                 augmentation: Augmentation | None = None):
        self.dataset, self.size, self.interpolation = dataset, int(input_size), interpolation
        self.transforms = build_transforms(augmentation) if augmentation is not None else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict:
        i, order_seed = key if isinstance(key, tuple) else (key, None)
        image, rec = self.dataset[i]
        pixels = resize(image, self.size, self.interpolation)
        if pixels.dtype != np.uint8:  # bilinear gives float 0..255; training works on uint8 like cv2
            pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
        boxes = torch.from_numpy(np.asarray(rec.boxes, np.float32).reshape(-1, 4))
        labels = torch.from_numpy(np.asarray(rec.labels, np.int64))
        dropped = 0
        if self.transforms is None:
            tensor = to_tensor(pixels)
        else:
            out = self.transforms({
                "image": tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)),
                "boxes": tv_tensors.BoundingBoxes(boxes * self.size, format="XYXY",
                                                  canvas_size=(self.size, self.size)),
                "labels": labels,
            }, order_seed)
            tensor = out["image"].as_subclass(torch.Tensor) * 2.0 - 1.0
            dropped = len(labels) - len(out["labels"])
            boxes = out["boxes"].as_subclass(torch.Tensor).float() / self.size
            labels = out["labels"]
        return {"image": tensor, "boxes": boxes, "labels": labels, "index": i, "file": str(rec.file),
                "dropped": dropped}


class DetectionCollate:
    """Stack images, keep per-image boxes as lists. ``drop_empty`` leaves out images that
    augmentation left without a box, as ST's training generator does (unless all would go)."""

    def __init__(self, drop_empty: bool = False):
        self.drop_empty = drop_empty

    def __call__(self, samples: list[dict]) -> dict:
        dropped = sum(s["dropped"] for s in samples)
        kept = [s for s in samples if len(s["labels"])] if self.drop_empty else samples
        empty = len(samples) - len(kept)
        if not kept:
            kept, empty = samples, 0
        return {"images": torch.stack([s["image"] for s in kept]),
                "boxes": [s["boxes"] for s in kept], "labels": [s["labels"] for s in kept],
                "indices": torch.tensor([s["index"] for s in kept], dtype=torch.long),
                "files": [s["file"] for s in kept],
                "boxes_dropped": torch.tensor(dropped), "images_dropped": torch.tensor(empty)}


class DetectionDataModule(pl.LightningDataModule):
    """Train/val data for :class:`~ssd_mnv1.training.SSDLightningModule`.

    Args:
        train: training set: a COCO json, a folder with ``annotations.json`` + ``images/``, or ST's
            YOLO-Darknet folder (detected automatically).
        val: validation set (same layouts). Without it, ``val_split`` of ``train`` is held out.
        val_split: fraction of ``train`` held out for validation when ``val`` is not given.
        class_names: classes to read, in label order (person by default).
        input_size: model input S (linked to ``model.input_size`` by the CLI).
        batch_size: training batch (ST: 64); ``val_batch_size`` defaults to it.
        num_workers: loader processes (default: up to 4, at most the CPU count).
        pin_memory: default: on when CUDA is available.
        augmentation: ST's box-aware augmentation (see :class:`Augmentation`).
        train_interpolation: resize for training images (ST 2.0 trained with bilinear).
        drop_last: skip the last partial training batch, as ST 2.0 did.
        drop_empty: leave out images that augmentation left without a box (ST 2.0).
        synthetic_train / synthetic_val: use that many procedurally generated person-like images
            instead of ``train`` / ``val`` (the quickstart: no download).
        seed: seed of the synthetic images and of the ``val_split`` draw.
    """

    def __init__(self, train: Optional[str] = None, val: Optional[str] = None, val_split: float = 0.0,
                 class_names: list[str] = ["person"], input_size: int = 224, batch_size: int = 64,
                 val_batch_size: Optional[int] = None, num_workers: Optional[int] = None,
                 pin_memory: Optional[bool] = None, augmentation: Augmentation = Augmentation(),
                 train_interpolation: str = "bilinear", drop_last: bool = True, drop_empty: bool = True,
                 synthetic_train: int = 0, synthetic_val: int = 0, seed: int = 0):
        super().__init__()
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"data.val_split must be in [0, 1), got {val_split}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if train_interpolation not in INTERPOLATIONS:
            raise ValueError(f"data.train_interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                             f"got {train_interpolation!r}")
        if train is None and synthetic_train <= 0:
            raise ValueError("data.train is not set: give a dataset (COCO json/folder or YOLO folder) "
                             "or data.synthetic_train > 0 for generated images")
        if val is None and synthetic_val <= 0 and val_split == 0.0:
            raise ValueError("no validation data: set data.val, data.val_split or data.synthetic_val "
                             "(validation gives val_st_ap, which checkpointing monitors)")
        self.save_hyperparameters(ignore=["augmentation"])
        self.train_source, self.val_source, self.val_split = train, val, val_split
        self.class_names = list(class_names)
        self.input_size, self.batch_size = int(input_size), int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.augmentation = augmentation
        self.train_interpolation = train_interpolation
        self.drop_last, self.drop_empty = drop_last, drop_empty
        self.synthetic_train, self.synthetic_val, self.seed = synthetic_train, synthetic_val, seed
        self.train_set = self.val_set = None

    # ------------------------------------------------------------------------------ datasets
    def _open(self, source: str):
        from ..data import open_dataset

        return open_dataset(source, class_names=self.class_names)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from .synthetic import SyntheticPersons

        train = (SyntheticPersons(self.synthetic_train, seed=self.seed) if self.train_source is None
                 else self._open(self.train_source))
        if self.val_source is not None:
            val = self._open(self.val_source)
        elif self.synthetic_val > 0:
            val = SyntheticPersons(self.synthetic_val, seed=self.seed + 1_000_003)
        else:
            order = np.random.default_rng(self.seed).permutation(len(train))
            n_val = max(1, int(round(self.val_split * len(train))))
            val, train = _subset(train, np.sort(order[:n_val])), _subset(train, np.sort(order[n_val:]))
        if len(train) == 0:
            raise ValueError(f"data.train {self.train_source}: no training images")
        self.train_set, self.val_set = train, val
        rank_zero_info(f"train: {_describe(train)}\nval:   {_describe(val)}")

    def train_dataloader(self) -> DataLoader:
        samples = DetectionSamples(self.train_set, self.input_size, self.train_interpolation, self.augmentation)
        drop_last = self.drop_last and len(samples) >= self.batch_size
        if self.drop_last and not drop_last:
            rank_zero_warn(f"{len(samples)} training images < batch_size {self.batch_size}: keeping the "
                           "partial batch")
        # one random op order per batch, as ST's generator (data_aug is called once per batch)
        batches = OrderedBatchSampler(RandomSampler(samples), self.batch_size, drop_last)
        return DataLoader(samples, batch_sampler=batches, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, collate_fn=DetectionCollate(self.drop_empty),
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        samples = DetectionSamples(self.val_set, self.input_size, "nearest", None)
        return self._loader(samples, self.val_batch_size, shuffle=False, drop_last=False,
                            collate=DetectionCollate(False))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def _loader(self, samples, batch_size, *, shuffle, drop_last, collate) -> DataLoader:
        return DataLoader(samples, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=collate,
                          persistent_workers=self.num_workers > 0)


class _RecordSubset(Subset):
    """A Subset that keeps ``records`` (and describe) of the parent dataset."""

    @property
    def records(self):
        return [self.dataset.records[i] for i in self.indices]

    def describe(self) -> str:
        return f"{len(self)} of {_describe(self.dataset)}"


def _subset(dataset, indices) -> _RecordSubset:
    return _RecordSubset(dataset, [int(i) for i in indices])


def _describe(dataset) -> str:
    return dataset.describe() if hasattr(dataset, "describe") else f"{len(dataset)} images"
