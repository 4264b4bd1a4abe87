"""One way in: which kind of model file a path is, and the PyTorch detector it holds.

:func:`load_model` opens ST's detector ``.h5`` (through the Keras importer) and the project's or
Lightning's ``.ckpt`` (float or QAT); :func:`load_weights` puts a file's weights into a model built
by :func:`build_model` (an ImageNet ``.h5`` fills the backbone only). ONNX and TFLite
files are deployed graphs, not PyTorch models: :func:`ssd_mnv1.runners.open_runner` runs every kind.
Wherever a model file is asked for, a name of :data:`ssd_mnv1.zoo.MODEL_ZOO` (ST's released files,
e.g. ``st_ssd_mobilenet_v1_025_224``) is downloaded once and used (:mod:`ssd_mnv1.hub`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from .checkpoint import load_checkpoint
from .hub import resolve_model_file
from .model import SSDMobileNetV1
from .weights import load_keras_h5, read_keras_h5

#: Model file kinds and their suffixes (lower case); every tool accepts exactly these.
MODEL_SUFFIXES = {
    "checkpoint": (".ckpt", ".pt", ".pth"),
    "keras": (".h5", ".hdf5"),
    "onnx": (".onnx",),
    "tflite": (".tflite",),
}


def model_format(path: str | os.PathLike) -> str:
    """``checkpoint``, ``keras``, ``onnx`` or ``tflite`` from the suffix; one error for anything else."""
    path = Path(path)
    suffix = path.suffix.lower()
    for kind, suffixes in MODEL_SUFFIXES.items():
        if suffix in suffixes:
            return kind
    known = ", ".join(s for suffixes in MODEL_SUFFIXES.values() for s in suffixes)
    raise ValueError(f"{path}: unknown model file type '{suffix}'; expected one of {known}")


def _existing(path: str | os.PathLike) -> Path:
    path = resolve_model_file(path)  # a model zoo name becomes its downloaded file
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a model file")
    return path


def load_model(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """The :class:`~ssd_mnv1.SSDMobileNetV1` in an ST detector ``.h5`` or a ``.ckpt`` (QAT ones come
    back prepared for QAT, with their calibrated ranges), or of a model zoo name
    (``load_model("st_ssd_mobilenet_v1_025_224")``: ST's float file, downloaded once)."""
    path = _existing(path)
    kind = model_format(path)
    if kind == "checkpoint":
        return load_checkpoint(path, map_location)
    if kind == "keras":
        keras_file = read_keras_h5(path)
        if not keras_file.is_detector:
            raise ValueError(f"{path}: a Keras MobileNet backbone (ImageNet) file, not a detector; use it "
                             "as backbone weights: build_model(weights=...) or --model.backbone_weights")
        return load_keras_h5(keras_file)
    raise ValueError(f"{path}: an {kind.upper() if kind == 'onnx' else 'TFLite'} file is a deployed graph, not a "
                     "PyTorch model; evaluate/predict run it, export needs a .ckpt or an .h5")


def _is_quantizer_key(key: str) -> bool:
    return any(part.endswith("_quant") for part in key.split("."))


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``path`` into ``model``: an ImageNet ``.h5`` fills the backbone; a detector ``.h5`` or
    ``.ckpt`` fills every layer and must describe the same architecture. Of a QAT checkpoint only the
    float weights are taken (the ranges belong to the quantizers, which ``model`` may not have)."""
    path = _existing(path)
    kind = model_format(path)
    if kind == "keras":
        return load_keras_h5(path, model)
    source = load_model(path)
    if list(source.class_names) != list(model.class_names):
        raise ValueError(f"{path}: the weights are for the classes {list(source.class_names)}, the model has "
                         f"{list(model.class_names)} (data.class_names): train with the weights' classes, in "
                         "their order, or start from a model with these classes")
    if source.architecture() != model.architecture():
        raise ValueError(f"{path}: weights are for {source.architecture()}, the model is {model.architecture()}")
    wanted = model.state_dict().keys()
    state = {k: v for k, v in source.state_dict().items() if k in wanted}
    missing = [k for k in wanted if k not in state and not _is_quantizer_key(k)]
    if missing:
        raise ValueError(f"{path}: weights lack {missing[:5]}")
    model.load_state_dict(state, strict=False)
    return model


def build_model(alpha: float = 0.25, input_size: int = 224, num_classes: int | None = None,
                weights: str | os.PathLike | None = None, class_names: Sequence[str] | None = None) -> SSDMobileNetV1:
    """Build ST's SSD-MobileNetV1 with Keras initialisers, then load ``weights`` if given.

    ``weights``: a Keras-Applications MobileNet ImageNet ``.h5`` (backbone only), or any detector
    file :func:`ssd_mnv1.load_model` opens (an ST ``.h5``, a float or QAT checkpoint: its float
    weights), which must describe this architecture; or a model zoo name
    (``mobilenet_v1_025_224_imagenet``, ``st_ssd_mobilenet_v1_025_224``, ...). ``class_names`` (or ``num_classes``, see
    :func:`resolve_class_names`) sets the classes; one class is ``person`` by default.
    """
    model = SSDMobileNetV1(alpha=alpha, input_size=input_size, num_classes=num_classes, class_names=class_names)
    if weights is not None:
        load_weights(model, weights)
    return model
