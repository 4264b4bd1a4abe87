"""Lightning callback that turns a detector fine-tuning run into quantization-aware training."""

from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch

from .qat import QATDetector, calibrate, prepare_qat


def _images_of(batch) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        return batch["images"]
    return batch[0]


class QuantizationAwareTraining(pl.Callback):
    """Wrap ``pl_module.model`` in :class:`QATDetector` before training starts.

    * ``calibration_batches``: training batches used to initialise the activation ranges with
      TFLite's min/max rule before the first step (skipped when resuming: ranges come from the
      checkpoint).
    * ``distillation_weight`` > 0 keeps a frozen copy of the float model as ``pl_module.teacher``;
      a module that supports it (``SSDLightningModule``) adds the distillation loss.
    * ``calibrate_only``: no training - calibrate and stop (a post-training-quantization baseline
      whose fake-quant numbers the int8 TFLite reproduces).
    Checkpoints are marked ``hyper_parameters['qat'] = True`` so every tool rebuilds the QAT model.
    """

    def __init__(self, calibration_batches: int = 8, distillation_weight: float = 0.0, calibrate_only: bool = False):
        super().__init__()
        self.calibration_batches = calibration_batches
        self.distillation_weight = distillation_weight
        self.calibrate_only = calibrate_only

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(pl_module.model, QATDetector):
            return
        if self.distillation_weight > 0:
            teacher = copy.deepcopy(pl_module.model).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            pl_module.teacher = teacher
            pl_module.distillation_weight = self.distillation_weight
        pl_module.model = prepare_qat(pl_module.model)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None or self.calibration_batches <= 0:
            return
        dm = trainer.datamodule
        loader = dm.train_dataloader() if dm is not None else pl_module.train_dataloader()
        batches = []
        for i, batch in enumerate(loader):
            if i >= self.calibration_batches:
                break
            batches.append(_images_of(batch).to(pl_module.device))
        calibrate(pl_module.model, batches)
        if self.calibrate_only:
            trainer.should_stop = True

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint.setdefault("hyper_parameters", {})["qat"] = True
