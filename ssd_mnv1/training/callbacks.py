"""Callbacks of the training CLI."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only


class FitReport(pl.Callback):
    """Measure validation ST-AP before training and after it, and print where the weights went.

    The "before" figure is what fine-tuning starts from (or ~0 from scratch); "after" is measured
    on the final weights. Both use the full validation set in the main process.
    """

    def __init__(self, before: bool = True):
        super().__init__()
        self.before = before
        self.st_ap_before: float | None = None
        self.st_ap_after: float | None = None
        self._t0 = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
        if self.before and trainer.is_global_zero and trainer.fit_loop.epoch_loop.global_step == 0:
            self.st_ap_before = pl_module.evaluate_loader(trainer.datamodule.val_dataloader())
            print(f"validation ST-AP before training: {self.st_ap_before:.2f}", flush=True)

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        self.st_ap_after = pl_module.evaluate_loader(trainer.datamodule.val_dataloader())
        minutes = (time.perf_counter() - self._t0) / 60
        lines = ["", f"trained {trainer.global_step} steps ({trainer.current_epoch} epochs) in {minutes:.1f} min"]
        if self.st_ap_before is not None:
            lines.append(f"validation ST-AP ({pl_module.hparams.val_variant}, IoU 0.4): "
                         f"before {self.st_ap_before:.2f} -> after {self.st_ap_after:.2f}")
        else:
            lines.append(f"validation ST-AP ({pl_module.hparams.val_variant}, IoU 0.4): {self.st_ap_after:.2f}")
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.best_model_path:
                continue
            if cb.monitor is None:  # keeps the most recent weights
                lines.append(f"last checkpoint: {cb.best_model_path}")
            else:
                score = "" if cb.best_model_score is None else f" ({cb.monitor} {float(cb.best_model_score):.2f})"
                lines.append(f"best checkpoint: {cb.best_model_path}{score}")
            if cb.last_model_path:
                lines.append(f"last checkpoint: {cb.last_model_path}")
        print("\n".join(lines), flush=True)
