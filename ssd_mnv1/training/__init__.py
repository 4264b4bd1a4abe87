"""Training with PyTorch Lightning: ST's matching, loss, augmentation, data module and module."""

from ..quantization.callback import QuantizationAwareTraining
from .augment import NO_AUGMENTATION, Augmentation, build_transforms
from .callbacks import FitReport, LearningCurves, LogProgressBar, save_learning_curves
from .data import DetectionCollate, DetectionDataModule, DetectionSamples
from .loss import hard_negative_mining_loss, softmax_focal_loss, ssd_loss
from .matcher import anchor_targets, batch_anchor_targets, match_anchors
from .module import NonFiniteLossError, SSDLightningModule
from .profile import StepProfile
from .synthetic import SyntheticPersons, render_objects, render_scene, write_synthetic_dataset

__all__ = ["NO_AUGMENTATION", "Augmentation", "DetectionCollate", "DetectionDataModule", "DetectionSamples",
           "FitReport", "LearningCurves", "LogProgressBar", "NonFiniteLossError", "QuantizationAwareTraining",
           "SSDLightningModule", "StepProfile", "SyntheticPersons", "anchor_targets", "batch_anchor_targets",
           "build_transforms", "hard_negative_mining_loss", "match_anchors", "render_objects", "render_scene", "save_learning_curves",
           "softmax_focal_loss", "ssd_loss", "write_synthetic_dataset"]
