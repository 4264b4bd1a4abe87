"""ST's own Keras model through tf_keras, as a runner (reference runs only; the export extra)."""

from __future__ import annotations

import os

import numpy as np

from ..preprocess import normalize
from .io import identify_outputs


class KerasRunner:
    """ST's own Keras model through tf_keras (reference runs only; needs the export extra)."""

    def __init__(self, path: str | os.PathLike):
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tf_keras

        self.model = tf_keras.models.load_model(str(path), compile=False)
        self.input_size = int(self.model.input_shape[1])
        self.name = "keras"
        self.class_names = None

    def __call__(self, images: np.ndarray):
        outs = self.model(normalize(images), training=False)
        return identify_outputs([np.asarray(o) for o in outs], self.input_size)
