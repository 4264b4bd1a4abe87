"""Pretrained-weight adapters, kept apart from the model code (as timm does)."""

from .keras_h5 import KerasImportError, keras_variables, load_keras_h5, read_keras_h5

__all__ = ["KerasImportError", "keras_variables", "load_keras_h5", "read_keras_h5"]
