"""Quantization-aware training and calibration that simulate TFLite int8 (no TensorFlow needed)."""

from .qat import ActivationQuantizer, QATDetector, calibrate, prepare_qat

__all__ = ["ActivationQuantizer", "QATDetector", "calibrate", "prepare_qat"]
