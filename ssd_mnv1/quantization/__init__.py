"""Quantization-aware training and calibration that simulate TFLite int8 (no TensorFlow needed)."""

from .distill import distillation_loss
from .qat import ActivationQuantizer, QATDetector, calibrate, prepare_qat

__all__ = ["ActivationQuantizer", "QATDetector", "calibrate", "distillation_loss", "prepare_qat"]
