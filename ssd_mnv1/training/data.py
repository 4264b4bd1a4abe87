"""LightningDataModule over the project's dataset layouts (COCO json, ST's YOLO) or synthetic data.

Training images are stretched to SxS (bilinear, as ST 2.0's training did whatever its config said)
and augmented box-aware; validation images get exactly the evaluation preprocessing (TF nearest,
x/127.5 - 1), so ``val_st_ap`` equals what ``python -m ssd_mnv1.evaluate`` reports for the same
weights. Anchor matching happens in the LightningModule: it is cheap and belongs to the recipe.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset
from torchvision import tv_tensors

from ..preprocess import INTERPOLATIONS, resize_uint8, to_tensor
from ..cpus import plan_cpus, torch_threads
from .augment import Augmentation, OrderedBatchSampler, build_transforms


class DetectionSamples(Dataset):
    """Model-ready samples of a detection dataset: ``{"image", "boxes", "labels", "index", "file",
    "dropped"}``, image float ``(3, S, S)`` in [-1, 1], boxes normalized xyxy, labels 1-based.

    ``samples[i]`` augments with its own random op order; ``samples[(i, seed)]`` (what
    :class:`~ssd_mnv1.training.augment.OrderedBatchSampler` yields) with the order of ``seed``, shared
    by the whole batch as in ST's training generator; ``uint8=True`` gives the resized uint8
    ``(3, S, S)`` image unnormalized (augmented later, batched). With ``cache`` (a
    :class:`~ssd_mnv1.data.cache.ResizedImageCache` of ``dataset`` at this size and interpolation)
    the resized pixels come from it instead of being decoded: the same pixels, once."""

    def __init__(self, dataset, input_size: int, interpolation: str = "nearest",
                 augmentation: Augmentation | None = None, cache=None, uint8: bool = False):
        self.dataset, self.size, self.interpolation = dataset, int(input_size), interpolation
        self.transforms = build_transforms(augmentation) if augmentation is not None else None
        if cache is not None and (len(cache) != len(dataset) or cache.size != self.size):
            raise ValueError(f"image cache {cache.path} holds {len(cache)} images at {cache.size}px, "
                             f"expected {len(dataset)} at {self.size}px")
        if uint8 and augmentation is not None:
            raise ValueError("uint8 samples are for augmenting the batch later (augment_on: device): "
                             "give no augmentation here")
        self.cache, self.uint8 = cache, uint8
        self.records = dataset.records

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list) -> list[dict]:
        """A batch's samples (what the DataLoader asks for), augmented on one torch thread."""
        with torch_threads(1):
            return [self[key] for key in keys]

    def __getitem__(self, key) -> dict:
        i, order_seed = key if isinstance(key, tuple) else (key, None)
        if self.cache is not None:
            pixels, rec = self.cache[i], self.records[i]
        else:
            image, rec = self.dataset[i]
            pixels = resize_uint8(image, self.size, self.interpolation)
        boxes = torch.from_numpy(np.asarray(rec.boxes, np.float32).reshape(-1, 4))
        labels = torch.from_numpy(np.asarray(rec.labels, np.int64))
        dropped = 0
        if self.uint8:
            tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous()
        elif self.transforms is None:
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
        batch = {"images": torch.stack([s["image"] for s in samples]),
                 "boxes": [s["boxes"] for s in samples], "labels": [s["labels"] for s in samples],
                 "indices": torch.tensor([s["index"] for s in samples], dtype=torch.long),
                 "files": [s["file"] for s in samples],
                 "boxes_dropped": torch.tensor(sum(s["dropped"] for s in samples)), "images_dropped": torch.tensor(0)}
        return drop_empty_images(batch) if self.drop_empty else batch


def drop_empty_images(batch: dict) -> dict:
    """The batch without the images that augmentation left without a box (unless all would go),
    counted in ``images_dropped``: ST's training generator skips them."""
    keep = [i for i, labels in enumerate(batch["labels"]) if len(labels)]
    if not keep or len(keep) == len(batch["labels"]):
        return batch
    index = torch.tensor(keep, device=batch["images"].device)
    return {**batch, "images": batch["images"].index_select(0, index),
            "boxes": [batch["boxes"][i] for i in keep], "labels": [batch["labels"][i] for i in keep],
            "indices": batch["indices"][keep], "files": [batch["files"][i] for i in keep],
            "images_dropped": batch["images_dropped"] + len(batch["labels"]) - len(keep)}


class RepeatedBatches:
    """A batch sampler that runs ``batches`` again and again (each pass: a fresh shuffle); its
    length is one pass's, which :class:`EpochStream` calls an epoch."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        while True:
            yield from self.batches


class EpochStream:
    """The training batches of one DataLoader iterator that runs on across epochs.

    A DataLoader starts each epoch with empty workers: the step waits while they augment the
    epoch's first batch. Over :class:`RepeatedBatches`, the workers prepare the next epoch's first
    batches during this epoch's last steps, as ST's endless Keras generator does. Each ``iter()``
    is one epoch of ``len(loader)`` batches. The batches are a function of the seed: the sampler's
    draws happen in the main process in step order, the augmentation's in the seeded workers.
    """

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self._iterator = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self._iterator is None:
            self._iterator = iter(self.loader)
        for _ in range(len(self.loader)):
            yield next(self._iterator)


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
        num_workers: loader processes; ``torch_threads``: torch's intra-op threads in the training
            process. Default (None): split the CPUs this process may use (affinity and cgroup quota,
            not the machine's count) so that workers + threads never exceed them
            (:func:`ssd_mnv1.cpus.plan_cpus`; printed at the start of a fit).
        augment_on: ``loader``: ST's augmentation per image in the loader; ``device``: the same
            ops batched after the batch is on the training device
            (:class:`~ssd_mnv1.training.batch_augment.BatchAugmentation`: for GPU training, where the
            loader's CPUs are the bottleneck).
        cache: decode and resize each image once into a memory-mapped file under ``cache_dir``
            (default ``$SSD_MNV1_CACHE`` or ``~/.cache/ssd_mnv1/images``) and augment from it; the
            same pixels as decoding every time (:mod:`ssd_mnv1.data.cache`). Off: decode each time.
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
                 torch_threads: Optional[int] = None, cache: bool = True, cache_dir: Optional[str] = None,
                 augment_on: Literal["loader", "device"] = "loader",
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
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        if torch_threads is not None and torch_threads < 1:
            raise ValueError(f"data.torch_threads must be >= 1, got {torch_threads}")
        self.requested_workers, self.requested_threads = num_workers, torch_threads
        self.num_workers = plan_cpus(num_workers, torch_threads).workers
        self.cache, self.cache_dir = bool(cache), cache_dir
        if augment_on not in ("loader", "device"):
            raise ValueError(f"data.augment_on must be 'loader' or 'device', got {augment_on!r}")
        self.augment_on = augment_on
        self._batch_augmentation = None
        self._caches: dict = {}
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
        if self.trainer is not None:  # split the CPUs once the accelerator is known
            accelerator = "cpu" if self.trainer.accelerator.__class__.__name__.startswith("CPU") else "gpu"
            plan = plan_cpus(self.requested_workers, self.requested_threads, accelerator=accelerator)
            self.num_workers = plan.workers
            torch.set_num_threads(plan.threads)
            rank_zero_info(f"CPU plan: {plan.describe()} (data.num_workers / data.torch_threads override)")
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
        on_device = self.augment_on == "device"
        samples = DetectionSamples(self.train_set, self.input_size, self.train_interpolation,
                                   None if on_device else self.augmentation,
                                   self._cache(self.train_set, self.train_interpolation), uint8=on_device)
        drop_last = self.drop_last and len(samples) >= self.batch_size
        if self.drop_last and not drop_last:
            rank_zero_warn(f"{len(samples)} training images < batch_size {self.batch_size}: keeping the "
                           "partial batch")
        # one random op order per batch, as ST's generator (data_aug is called once per batch)
        batches = OrderedBatchSampler(RandomSampler(samples), self.batch_size, drop_last)
        collate = DetectionCollate(self.drop_empty and not on_device)
        if self.num_workers > 0 and (self.trainer is None or self.trainer.world_size == 1):
            # one iterator for the whole fit: the workers prepare the next epoch's first batches early
            return EpochStream(DataLoader(samples, batch_sampler=RepeatedBatches(batches),
                                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                                          collate_fn=collate))
        return DataLoader(samples, batch_sampler=batches, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, collate_fn=collate, persistent_workers=self.num_workers > 0)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """``augment_on: device``: augment the uint8 training batch where it now is, batched."""
        images = batch["images"] if isinstance(batch, dict) else None
        if images is None or images.dtype != torch.uint8 or self.augment_on != "device":
            return batch
        if self._batch_augmentation is None:
            from .batch_augment import BatchAugmentation

            self._batch_augmentation = BatchAugmentation(self.augmentation)
        out = self._batch_augmentation(images, batch["boxes"], batch["labels"])
        batch = {**batch, "images": out["images"], "boxes": out["boxes"], "labels": out["labels"],
                 "boxes_dropped": batch["boxes_dropped"].to(images.device) + out["boxes_dropped"]}
        return drop_empty_images(batch) if self.drop_empty else batch

    def val_dataloader(self) -> DataLoader:
        samples = DetectionSamples(self.val_set, self.input_size, "nearest", None,
                                   self._cache(self.val_set, "nearest"))
        return self._loader(samples, self.val_batch_size, shuffle=False, drop_last=False,
                            collate=DetectionCollate(False))

    def _cache(self, dataset, interpolation: str):
        """The decoded-image cache of ``dataset`` (built on first use), or None when ``cache`` is off."""
        if not self.cache:
            return None
        key = (id(dataset), interpolation)
        if key not in self._caches:
            from ..data.cache import ResizedImageCache

            self._caches[key] = ResizedImageCache.open_or_build(
                dataset, self.input_size, interpolation, self.cache_dir, workers=self.num_workers,
                log=rank_zero_info)
        return self._caches[key]

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

    def fingerprint(self) -> list:
        from ..data.cache import fingerprint

        return ["subset", fingerprint(self.dataset), list(self.indices)]

    def describe(self) -> str:
        return f"{len(self)} of {_describe(self.dataset)}"


def _subset(dataset, indices) -> _RecordSubset:
    return _RecordSubset(dataset, [int(i) for i in indices])


def _describe(dataset) -> str:
    return dataset.describe() if hasattr(dataset, "describe") else f"{len(dataset)} images"
