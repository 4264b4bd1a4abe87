"""One way in: which kind of model file a path is, and the PyTorch detector it holds.

:func:`load_model` opens ST's detector ``.h5`` (through the Keras importer) and the project's or
Lightning's ``.ckpt`` (float or QAT); :func:`load_weights` puts a file's weights into a model built
by :func:`ssd_mnv1.build_model` (an ImageNet ``.h5`` fills the backbone only). ONNX and TFLite
files are deployed graphs, not PyTorch models: :func:`ssd_mnv1.runners.open_runner` runs every kind.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

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
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a model file")
    return path


def load_model(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """The :class:`~ssd_mnv1.SSDMobileNetV1` in an ST detector ``.h5`` or a ``.ckpt`` (QAT ones come
    back prepared for QAT, with their calibrated ranges)."""
    path = _existing(path)
    kind = model_format(path)
    if kind == "checkpoint":
        from .checkpoint import load_checkpoint

        return load_checkpoint(path, map_location)
    if kind == "keras":
        from .weights import load_keras_h5, read_keras_h5

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
        from .weights import load_keras_h5

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
