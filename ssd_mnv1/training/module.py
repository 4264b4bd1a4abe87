"""LightningModule for ST's detector with ST's training recipe (docs/st_model.md §8).

Matching (bipartite, then IoU >= 0.5, in float64), softmax focal loss on all anchors (alpha 1.0,
gamma 0.25) + smooth-L1 (sigma 0.5) on positives over the batch's positives, plus the Keras L2(5e-4)
loss of the ST-added kernels; Keras' Adam 1e-3 (epsilon 1e-7 on sqrt(v)); ReduceLROnPlateau on
val_loss. ``bench/train_step_parity.py`` checks one step of this against ST's own Keras step.
Validation logs ``val_loss`` and ``val_st_ap`` (ST-AP, percent) over all ranks' detections.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Literal, Optional

import pytorch_lightning as pl
import torch
from torch import nn

from ..anchors import generate_anchors
from ..loading import build_model, load_weights
from ..metrics import STAPEvaluator
from ..model import resolve_class_names
from ..postprocess import postprocess
from .loss import l2_penalty, ssd_loss
from .matcher import batch_anchor_targets
from .optim import KerasAdam


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the message names the batch's image files."""


def set_prior_probability(model: nn.Module, prior: float) -> None:
    """Bias each classification head so every class starts at ``prior`` and background at the rest.

    ST's heads end in a BatchNorm, so the bias goes into the BN's beta (a conv bias would be
    normalized away in training mode).
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"model.prior_probability must be in (0, 1), got {prior}")
    import math

    num_outputs = model.head.num_outputs
    background = math.log((1.0 - prior * (num_outputs - 1)) / prior) if prior * (num_outputs - 1) < 1 else 0.0
    with torch.no_grad():
        for head in model.head.cls:
            beta = head.bn.bias.view(-1, num_outputs)
            beta.zero_()
            beta[:, 0] = background


def st_added_kernels(model: nn.Module) -> list[nn.Parameter]:
    """Conv kernels of the layers ST adds to MobileNet (extras, FPN, heads): the ones with L2."""
    return [m.weight for part in (model.neck, model.head) for m in part.modules() if isinstance(m, nn.Conv2d)]


class SSDLightningModule(pl.LightningModule):
    """ST's SSD-MobileNetV1 detector with ST's training recipe.

    Args:
        alpha, input_size, class_names: the model; any input size of
            :data:`~ssd_mnv1.specs.SUPPORTED_INPUT_SIZES` (ST ships 192/224/256). The CLI links
            ``class_names`` to ``data.class_names``; ``num_classes`` alone names them class1..classC.
        weights: initial weights: an ST detector .h5, or a project/Lightning checkpoint.
        backbone_weights: a Keras-Applications MobileNet ImageNet .h5 (backbone only).
        lr: Adam learning rate (ST: 1e-3). ``adam_eps``: Keras' 1e-7 (added to sqrt(v), as Keras does).
        l2: Keras L2 factor on ST-added kernels (ST 2.0: 5e-4; 0 for ST 2025, whose custom train
            step dropped it); added to the training loss as Keras does (``train_reg``).
        classification_loss: ``focal`` (ST) or ``hard_negative_mining`` (SSD's CE with
            ``neg_pos_ratio`` negatives per positive).
        focal_alpha, focal_gamma: ST's actual values 1.0 and 0.25.
        box_weight: weight of the smooth-L1 term (ST: 1.0).
        detection_loss_weight: weight of ST's loss on the ground truth. With QAT's distillation
            (see :class:`~ssd_mnv1.quantization.callback.QuantizationAwareTraining`), 0 trains on the
            float teacher's outputs alone: on a few hundred images that keeps the int8 model close to
            the float one instead of refitting it to a small training set.
        match_iou: positive threshold after the bipartite step (ST: 0.5).
        match_variant: ``st20`` (ST 2.0's matching; a GT overlapping no free anchor gets none),
            ``st25`` (the same rule), ``st20_exact`` (also ST 2.0's bug: such a GT takes anchor 0
            from GT 0). See :mod:`ssd_mnv1.training.matcher`.
        plateau_monitor, plateau_patience, plateau_factor, plateau_min_delta: ReduceLROnPlateau
            (ST: val_loss, 20, 0.1, 1e-4); monitoring ``val_st_ap`` maximizes.
        val_variant: ST-AP variant of ``val_st_ap`` (``st20``: the 2.0 evaluator, default).
        prior_probability: start every anchor's person score at this probability by biasing the
            classification heads' BN (RetinaNet's prior; speeds up training from scratch). ST
            starts from zero bias (p = 0.5): leave it unset for ST's recipe. Ignored with weights.
        bn_momentum: BatchNorm running-statistics momentum, PyTorch convention (Keras' 0.99 is
            0.01, ST's value). Runs of a few hundred steps want 0.1, or evaluation sees stale stats.
        channels_last: NHWC memory format. Default (None): on for float CPU training, where oneDNN's
            NHWC convolutions (the depthwise ones above all) make a step's forward and backward
            ~1.8x faster; off elsewhere and for QAT (whose calibration must round as the
            exporter's). On a GPU with tensor cores ``true`` helps mixed precision.
        lr_schedule: ``plateau`` (ST's ReduceLROnPlateau, above) or ``cosine``: from ``lr`` to 0 over
            the run's planned steps (``trainer.max_steps`` / ``max_epochs``), per step; a run of a
            fixed length then ends converged instead of wherever the last plateau left it.
    """

    def __init__(self, alpha: Literal[0.25, 0.5, 0.75, 1.0] = 0.25, input_size: int = 224,
                 num_classes: Optional[int] = None, class_names: Optional[list[str]] = None, weights: Optional[str] = None, backbone_weights: Optional[str] = None,
                 lr: float = 1e-3, adam_eps: float = 1e-7, l2: float = 5e-4,
                 classification_loss: Literal["focal", "hard_negative_mining"] = "focal",
                 focal_alpha: float = 1.0, focal_gamma: float = 0.25, neg_pos_ratio: float = 3.0,
                 box_weight: float = 1.0, detection_loss_weight: float = 1.0, match_iou: float = 0.5,
                 match_variant: Literal["st20", "st25", "st20_exact"] = "st20",
                 plateau_monitor: Literal["val_loss", "val_st_ap"] = "val_loss", plateau_patience: int = 20,
                 plateau_factor: float = 0.1, plateau_min_delta: float = 1e-4,
                 val_variant: Literal["st20", "st25"] = "st20", prior_probability: Optional[float] = None,
                 bn_momentum: float = 0.01, channels_last: Optional[bool] = None,
                 lr_schedule: Literal["plateau", "cosine"] = "plateau"):
        # resolved before save_hyperparameters reads them: the checkpoint stores both, and they equal
        # the data module's class_names (Lightning refuses to log differing shared hparams)
        class_names = list(resolve_class_names(num_classes, class_names))
        num_classes = len(class_names)
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(alpha=alpha, input_size=input_size, class_names=class_names)
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"model.bn_momentum must be in (0, 1], got {bn_momentum}")
        for bn in self.model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.momentum = bn_momentum
        if prior_probability is not None:
            set_prior_probability(self.model, prior_probability)
        if backbone_weights:
            load_weights(self.model, backbone_weights)
        if weights:
            load_weights(self.model, weights)
        # The matcher's anchors: ST's float64 values (the model's float32 ones break exact ties
        # differently). Not a buffer, so that no precision setting casts them.
        self._match_anchors = generate_anchors(self.model.spec, torch.float64)
        self.teacher: nn.Module | None = None  # set by the QAT callback for distillation
        self.distillation_weight = 0.0
        self.distillation_objective = "kl"  # or "detections" (ssd_mnv1.quantization.distill)
        self.step_profile = None  # a StepProfile callback while it times the training steps
        self._channels_last = bool(channels_last)  # decided in setup() when None (auto)
        # validation/test ST-AP; torchmetrics gathers its states over the ranks on compute()
        self.val_metric = STAPEvaluator(self.model.input_size, self.hparams.val_variant)

    # ------------------------------------------------------------------------------------ model
    def forward(self, images: torch.Tensor):
        return self.model(images)

    def setup(self, stage: str) -> None:
        from ..quantization.qat import is_qat

        channels_last = self.hparams.channels_last
        if channels_last is None:  # QAT (prepared by its callback's setup, which runs first) keeps the
            # exporter's NCHW arithmetic: its int8-grid ranges must match the export's to the last bit
            channels_last = (self._trainer is not None and type(self._trainer.accelerator).__name__.startswith("CPU")
                             and not is_qat(self.model))
        self._channels_last = bool(channels_last)
        if self._channels_last:
            self.model.to(memory_format=torch.channels_last)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Times the block as phase ``name`` of the step when a :class:`StepProfile` listens."""
        if self.step_profile is None:
            yield
            return
        start = time.perf_counter()
        yield
        self.step_profile.mark(name, time.perf_counter() - start)

    def _images(self, batch: dict) -> torch.Tensor:
        images = batch["images"]
        return images.contiguous(memory_format=torch.channels_last) if self._channels_last else images

    def targets(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-anchor classes ``(N, A)`` and box-coder targets ``(N, A, 4)`` of ``batch``'s boxes."""
        if self._match_anchors.device != self.device:
            self._match_anchors = self._match_anchors.to(self.device)
        return batch_anchor_targets(batch["boxes"], batch["labels"], self._match_anchors, self.hparams.match_iou,
                                    self.hparams.match_variant)

    def _loss(self, probs, offsets, labels, target_offsets):
        hp = self.hparams
        return ssd_loss(probs, offsets, labels, target_offsets,
                        classification=hp.classification_loss, focal_alpha=hp.focal_alpha,
                        focal_gamma=hp.focal_gamma, neg_pos_ratio=hp.neg_pos_ratio, box_weight=hp.box_weight)

    # --------------------------------------------------------------------------------- training
    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss ``fit`` minimises on ``batch`` (one training-mode forward, which also updates the
        BN statistics) and its parts: ST's detection loss, its classification / box terms, the L2
        term, the number of positives and, with a QAT teacher, the distillation term."""
        images = self._images(batch)
        with self.phase("forward"):
            logits, offsets = self.model.forward_logits(images)
        with self.phase("matching"):
            labels, target_offsets = self.targets(batch)
        with self.phase("loss"):
            out = self._loss(logits.float().softmax(-1), offsets.float(), labels, target_offsets)
            reg = l2_penalty(st_added_kernels(self.model), self.hparams.l2)
        loss = self.hparams.detection_loss_weight * out.total + reg
        parts = {"detection": out.total, "classification": out.classification, "box": out.localization,
                 "reg": reg, "num_positives": torch.tensor(out.num_positives)}
        if self.teacher is not None and self.distillation_weight > 0:
            distill = self._distillation(images, logits, offsets)
            loss = loss + self.distillation_weight * distill
            parts["distill"] = distill
        return loss, parts

    def _distillation(self, images: torch.Tensor, logits: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """The QAT teacher's distillation loss of the student's ``logits`` / ``offsets`` on ``images``:
        :func:`~ssd_mnv1.quantization.distillation_loss` (``kl``) or
        :func:`~ssd_mnv1.quantization.distill.detection_distillation_loss` (``detections``)."""
        from ..quantization.distill import detection_distillation_loss, distillation_loss

        self.teacher.eval()  # Lightning's train() reaches it too; its BN statistics stay frozen
        with torch.no_grad():
            t_logits, t_offsets = self.teacher.forward_logits(images)
        loss = detection_distillation_loss if self.distillation_objective == "detections" else distillation_loss
        return loss(logits.float(), offsets.float(), t_logits.float(), t_offsets.float())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, parts = self.training_loss(batch)
        n = batch["images"].shape[0]
        if "distill" in parts:
            self.log("train_distill", parts["distill"], batch_size=n)
        if not torch.isfinite(loss):
            files = batch.get("files", [])
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step}, epoch {self.current_epoch} "
                f"(classification {parts['classification'].item()}, box {parts['box'].item()}); the batch "
                f"held {len(files)} image(s): {', '.join(files)}")
        self.log("train_loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({"train_cls": parts["classification"], "train_box": parts["box"], "train_reg": parts["reg"],
                       "train_positives": parts["num_positives"].float() / n}, batch_size=n)
        self.log("train_boxes_dropped", batch["boxes_dropped"].float(), reduce_fx="sum", on_step=False,
                 on_epoch=True, batch_size=n)
        self.log("train_images_dropped", batch["images_dropped"].float(), reduce_fx="sum", on_step=False,
                 on_epoch=True, batch_size=n)
        return loss

    # ------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self.val_metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = self._images(batch)
        logits, offsets = self.model.forward_logits(images)
        scores, offsets, anchors = self.model.outputs(logits, offsets)
        labels, target_offsets = self.targets(batch)
        out = self._loss(scores.float(), offsets.float(), labels, target_offsets)
        self.log("val_loss", out.total, prog_bar=True, sync_dist=True, batch_size=scores.shape[0])
        if self.teacher is not None and self.distillation_weight > 0:
            # QAT: how far the student is from its teacher on images it does not train on (no labels)
            self.log("val_distill", self._distillation(images, logits, offsets), sync_dist=True,
                     batch_size=scores.shape[0])
        self.update_st_ap(self.val_metric, batch, scores, offsets, anchors)

    def update_st_ap(self, metric: STAPEvaluator, batch: dict, scores, offsets, anchors) -> None:
        # dataset indices as image ids: score ties break in the single-process order on any number of ranks
        dets = postprocess(scores, offsets, anchors[:1], variant=metric.variant)
        metric.update(dets, batch["boxes"], batch["labels"], batch["indices"].tolist())

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.log("val_st_ap", 100.0 * self.val_metric.compute().ap, prog_bar=True, sync_dist=False)

    @torch.no_grad()
    def evaluate_loader(self, loader, detail: bool = False):
        """ST-AP (percent) of the current weights on ``loader`` in this process (fit reports); with
        ``detail`` the metric's whole result (per-detection matches, for paired intervals)."""
        was_training = self.training
        self.eval()
        metric = STAPEvaluator(self.model.input_size, self.hparams.val_variant, sync_on_compute=False)
        for batch in loader:
            images = self._images(batch).to(self.device)
            self.update_st_ap(metric, batch, *self.model(images))
        self.train(was_training)
        result = metric.compute()
        return result if detail else 100.0 * result.ap

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_test_epoch_end(self) -> None:
        self.log("test_st_ap", 100.0 * self.val_metric.compute().ap)

    # -------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        hp = self.hparams
        optimizer = KerasAdam([p for p in self.model.parameters() if p.requires_grad], lr=hp.lr,
                              keras_eps=hp.adam_eps)
        if hp.lr_schedule == "cosine":
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total) or total < 1:
                raise ValueError("model.lr_schedule cosine needs a run of known length: set trainer.max_steps "
                                 "or trainer.max_epochs")
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(total))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        if self._trainer is not None and self._trainer.limit_val_batches == 0:
            return optimizer  # no validation, nothing for the plateau schedule to watch
        mode = "max" if hp.plateau_monitor == "val_st_ap" else "min"
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=hp.plateau_factor, patience=hp.plateau_patience,
            threshold=hp.plateau_min_delta, threshold_mode="abs")
        # Step the plateau schedule on the epochs that validate, where its metric exists.
        every = (self._trainer.check_val_every_n_epoch or 1) if self._trainer is not None else 1
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": hp.plateau_monitor, "interval": "epoch",
                                 "frequency": every}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Runs before the weights are loaded: rebuild what the checkpoint was saved from.
        hp = checkpoint.get("hyper_parameters", {})
        if hp.get("qat"):
            from ..quantization import prepare_qat
            from ..quantization.qat import remap_legacy_qat_state

            self.model = prepare_qat(self.model, per_tensor=bool(hp.get("qat_per_tensor", False)))
            checkpoint["state_dict"] = remap_legacy_qat_state(checkpoint["state_dict"], "model.")
        if self.teacher is None:  # a QAT run's distillation teacher is rebuilt by its callback
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                        if not k.startswith("teacher.")}
