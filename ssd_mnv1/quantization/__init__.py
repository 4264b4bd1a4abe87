"""Quantization-aware training and calibration that simulate TFLite int8 (no TensorFlow needed)."""

from .distill import distillation_loss
from .qat import (ActivationQuantizer, InputQuantizer, WeightQuantizer, calibrate, is_qat, prepare_qat,
                  set_observer, to_float)

__all__ = ["ActivationQuantizer", "InputQuantizer", "WeightQuantizer", "calibrate", "distillation_loss", "is_qat",
           "prepare_qat", "set_observer", "to_float"]
