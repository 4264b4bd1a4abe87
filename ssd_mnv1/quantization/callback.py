"""Lightning callback that turns a detector fine-tuning run into quantization-aware training."""

from __future__ import annotations

import copy

import numpy as np
import pytorch_lightning as pl
import torch

from .qat import calibrate, is_qat, per_tensor_weights, prepare_qat, set_observer


def _images_of(batch) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        return batch["images"]
    return batch[0]


#: Bootstrap resamples of the guard's paired interval (ssd_mnv1.metrics.bootstrap).
GUARD_SAMPLES = 2000


def guard_decision(start, end) -> dict:
    """The guard's choice from the ST-AP results (:class:`~ssd_mnv1.metrics.STAPResult`) of the start
    and of the end on the same images: the end's gain with its 95 % paired bootstrap interval, and
    ``kept`` = ``qat`` only when the interval lies above 0."""
    from ..metrics.bootstrap import bootstrap_comparison

    gain = bootstrap_comparison([start, end], GUARD_SAMPLES, seed=0, confidence=0.95).difference(1, 0)
    return {"start_st_ap": 100.0 * start.ap, "qat_st_ap": 100.0 * end.ap, "gain": gain.value, "gain_low": gain.low,
            "gain_high": gain.high, "kept": "qat" if gain.low > 0 else "ptq_start"}


def _latest_checkpoints(trainer: pl.Trainer) -> list[str]:
    """The files that hold the run's latest weights: every checkpoint callback's ``last`` file, and
    the file of one that monitors nothing (``ssd_mnv1.fit``'s ``last.ckpt``); a checkpoint chosen
    by a metric holds its own epoch and is left alone."""
    paths = []
    for cb in trainer.checkpoint_callbacks:
        candidates = [getattr(cb, "last_model_path", "")]
        if getattr(cb, "monitor", "") is None:
            candidates.append(getattr(cb, "best_model_path", ""))
        paths += [p for p in candidates if p and p not in paths]
    return paths


class QuantizationAwareTraining(pl.Callback):
    """Prepare ``pl_module.model`` for quantization-aware training (:func:`prepare_qat`) before training starts.

    * ``calibration_images`` (a folder; ``calibration_count`` images picked with
      ``calibration_seed``): initialise the activation ranges with TFLite's min/max rule on exactly
      the images and preprocessing that ``python -m ssd_mnv1.export --calib`` feeds the TFLite
      converter, so the int8 file gets the ranges the model was fine-tuned with. Without it,
      ``calibration_batches`` (augmented) training batches are used. Skipped when resuming.
    * ``freeze_ranges``: keep the calibrated ranges fixed while fine-tuning (the weights adapt to
      the int8 grid the exporter will reproduce); otherwise they follow an EMA of training batches.
      With ``calibration_images`` the frozen ranges are re-calibrated before every validation, as
      the TFLite converter will calibrate the weights of that moment: ``val_st_ap`` and the
      checkpoints then describe the int8 file that export produces.
    * ``distillation_weight`` > 0 keeps a frozen copy of the float model as ``pl_module.teacher``;
      a module that supports it (``SSDLightningModule``) adds the distillation loss.
    * ``per_tensor``: one weight scale per kernel instead of per output channel (the STM32MP25
      NPU's int8; export the checkpoint with ``--per-tensor``).
    * ``equalize``: start from the equalized float model (:mod:`.equalize`: dead channels folded,
      layers equalized - exact - and, with ``calibration_images``, biases corrected for the int8
      weights), as the exporter does for per-tensor post-training quantization. ``qat.yaml`` turns
      it on for per-channel weights too: equalized and bias-corrected, ST's 224 model, per
      channel, goes from 52.95 to 53.54 ST-AP under TFLite's reference kernels (export ``--equalize``).
    * ``calibrate_only``: no training - calibrate and stop (a post-training-quantization baseline
      whose fake-quant numbers the int8 TFLite reproduces).
    * ``distillation``: ``kl`` (every anchor's class distribution and the foreground-weighted
      offsets) or ``detections`` (only the anchors the metric ranks:
      :func:`~ssd_mnv1.quantization.distill.detection_distillation_loss`).
    * ``guard``: measure ST-AP on the validation set of the run (in the QAT recipe a held-out split
      of the training images, ``data.val_split``) at the post-training start and at the end, and
      keep the QAT weights only when that split resolves their gain (the 95 % paired bootstrap
      interval of end - start over its images lies above 0); otherwise the start's weights are
      restored and ``last.ckpt`` is written again holding them (a few dozen images cannot tell a
      gain of a point from noise, and the start is the known quantity). Either way the run says
      which it kept, and the checkpoint records it (``hyper_parameters['qat_guard']``; ``export``
      prints it). A resumed run (``--ckpt_path``) no longer knows its start and says it has no guard.
    Checkpoints are marked ``hyper_parameters['qat'] = True`` (and ``qat_per_tensor``) so every
    tool rebuilds the QAT model.
    """

    def __init__(self, calibration_batches: int = 8, distillation_weight: float = 0.0, calibrate_only: bool = False,
                 calibration_images: str | None = None, calibration_count: int = 100, calibration_seed: int = 0,
                 freeze_ranges: bool = False, per_tensor: bool = False, equalize: bool = False,
                 distillation: str = "kl", guard: bool = False):
        super().__init__()
        from .distill import DISTILLATION_OBJECTIVES

        if distillation not in DISTILLATION_OBJECTIVES:
            raise ValueError(f"QuantizationAwareTraining.distillation must be one of "
                             f"{', '.join(DISTILLATION_OBJECTIVES)}, got {distillation!r}")
        self.distillation = distillation
        self.guard = guard
        self.guard_result: dict | None = None
        self._start_state: dict | None = None
        self._start_result = None
        self.per_tensor = per_tensor
        self.equalize = equalize
        self.calibration_batches = calibration_batches
        self.calibration_images = calibration_images
        self.calibration_count = calibration_count
        self.calibration_seed = calibration_seed
        self.freeze_ranges = freeze_ranges
        self.distillation_weight = distillation_weight
        self.calibrate_only = calibrate_only
        self._calibration: list[torch.Tensor] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if is_qat(pl_module.model):
            if per_tensor_weights(pl_module.model) != self.per_tensor:
                raise ValueError(f"QuantizationAwareTraining.per_tensor={self.per_tensor}, but the model (resumed) "
                                 f"has {'per-tensor' if not self.per_tensor else 'per-channel'} weights")
            return
        if self.distillation_weight > 0:
            teacher = copy.deepcopy(pl_module.model).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            pl_module.teacher = teacher
            pl_module.distillation_weight = self.distillation_weight
            pl_module.distillation_objective = self.distillation
        model = pl_module.model
        if self.equalize and trainer.ckpt_path is None:
            model = self._equalized(model)
        pl_module.model = prepare_qat(model, per_tensor=self.per_tensor)

    def _equalized(self, model: torch.nn.Module) -> torch.nn.Module:
        from .calibration import as_batches, calibration_images
        from .equalize import correct_bias, equalize

        model, report = equalize(model)
        print(f"QAT starts from the equalized model: {report.dead_channels} dead and {report.constant_channels} "
              f"constant channels folded, {report.scaled_channels} channels rescaled", flush=True)
        if self.calibration_images is not None:
            images = calibration_images(self.calibration_images, model.input_size, self.calibration_count,
                                        self.calibration_seed, option="QuantizationAwareTraining.calibration_images")
            model = correct_bias(model, as_batches(images), self.per_tensor)
        return model

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None:
            batches = self._calibration_batches(trainer, pl_module)
            if batches:
                calibrate(pl_module.model, batches)
        if self.freeze_ranges:
            set_observer(pl_module.model, "ema", observe=False)
        if self.calibrate_only:
            trainer.should_stop = True

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._recalibrate(trainer, pl_module)

    def _recalibrate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Frozen ranges follow the weights as the exporter's calibration will (see ``freeze_ranges``)."""
        if self.freeze_ranges and self.calibration_images is not None:
            calibrate(pl_module.model, self._calibration_batches(trainer, pl_module))
            set_observer(pl_module.model, "ema", observe=False)

    def _guard_score(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        return pl_module.evaluate_loader(trainer.datamodule.val_dataloader(), detail=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.guard or self.calibrate_only:
            return
        if trainer.fit_loop.epoch_loop.global_step != 0:
            print(f"QAT guard: off (resumed at step {trainer.fit_loop.epoch_loop.global_step}: the post-training "
                  "start is not known here); last.ckpt will hold the QAT weights", flush=True)
            return
        self._start_state = copy.deepcopy(pl_module.model.state_dict())
        self._start_result = self._guard_score(trainer, pl_module)
        self.guard_result = {"start_st_ap": 100.0 * self._start_result.ap}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start_state is None:
            return
        self._recalibrate(trainer, pl_module)
        result = self.guard_result
        result.update(guard_decision(self._start_result, self._guard_score(trainer, pl_module)))
        result["data"] = "the run's validation set" + (f" ({trainer.datamodule.val_split:.0%} of the training "
                                                       "images, held out)" if getattr(trainer.datamodule, "val_split", 0)
                                                       and trainer.datamodule.val_source is None else "")
        if result["kept"] == "ptq_start":
            pl_module.model.load_state_dict(self._start_state)
        print(f"QAT guard: ST-AP on {result['data']}: post-training start {result['start_st_ap']:.2f}, after QAT "
              f"{result['qat_st_ap']:.2f} (gain {result['gain']:+.2f}, 95 % paired interval [{result['gain_low']:+.2f}, "
              f"{result['gain_high']:+.2f}]{'' if result['kept'] == 'qat' else ': not resolved'}): keeping "
              f"{'the QAT weights' if result['kept'] == 'qat' else 'the start'}", flush=True)
        for path in _latest_checkpoints(trainer):  # last.ckpt holds what the guard kept, and says so
            trainer.save_checkpoint(path)
        self._start_state = None

    def _calibration_batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[torch.Tensor]:
        if self.calibration_images is not None:
            if self._calibration is not None:
                return self._calibration
            from .calibration import calibration_images

            images = calibration_images(self.calibration_images, pl_module.model.input_size,
                                        self.calibration_count, self.calibration_seed,
                                        option="QuantizationAwareTraining.calibration_images")
            x = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).to(pl_module.device)
            self._calibration = list(x.split(16))
            return self._calibration
        if self.calibration_batches <= 0:
            return []
        dm = trainer.datamodule
        loader = dm.train_dataloader() if dm is not None else pl_module.train_dataloader()
        batches = []
        for i, batch in enumerate(loader):
            if i >= self.calibration_batches:
                break
            batches.append(_images_of(batch).to(pl_module.device))
        return batches

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        hp = checkpoint.setdefault("hyper_parameters", {})
        hp["qat"], hp["qat_per_tensor"] = True, self.per_tensor
        if self.guard_result is not None and "kept" in self.guard_result:
            hp["qat_guard"] = dict(self.guard_result)
