"""The project's checkpoint format, shared by the converter, training, evaluation and export.

A checkpoint is a Lightning-style dict: ``state_dict`` with the detector's weights under the
``model.`` prefix and ``hyper_parameters`` holding ``alpha``, ``input_size``, ``num_classes`` and
``class_names`` (files written before class names were stored name one class ``person``).
Files written by ``python -m ssd_mnv1.convert`` and by Lightning training share it, so either loads
with :func:`load_checkpoint` and either can initialise training.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .fileio import atomic_torch_save, existing_file
from .model import SSDMobileNetV1

MODEL_PREFIX = "model."
MODEL_HPARAMS = ("alpha", "input_size", "num_classes")


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **extra) -> Path:
    """Write ``model`` as a project checkpoint (atomically)."""
    from .quantization.qat import per_tensor_weights

    state = {MODEL_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    hparams = {**model.architecture(), "qat": model.qat, "qat_per_tensor": per_tensor_weights(model)}
    atomic_torch_save({"state_dict": state, "hyper_parameters": hparams, "ssd_mnv1": extra}, path)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Build the detector described by a project/Lightning checkpoint and load its weights.

    A quantization-aware checkpoint (``hyper_parameters['qat']``, and ``qat_per_tensor`` for
    per-tensor weights) gives a model prepared with :func:`~ssd_mnv1.quantization.prepare_qat`; checkpoints of the former QAT wrapper still load.
    """
    path = existing_file(path, "checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt file, some with long texts
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise ValueError(f"{path}: cannot read as a PyTorch checkpoint: corrupt, truncated or another "
                         f"format ({detail})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not an ssd_mnv1 checkpoint (no 'state_dict')")
    hp = ckpt.get("hyper_parameters") or {}
    missing = [k for k in MODEL_HPARAMS if k not in hp]
    if missing:
        raise ValueError(f"{path}: hyper_parameters lack {', '.join(missing)}")
    model = SSDMobileNetV1(**{k: hp[k] for k in MODEL_HPARAMS}, class_names=hp.get("class_names"))
    if hp.get("qat"):
        from .quantization import prepare_qat
        from .quantization.qat import remap_legacy_qat_state

        model = prepare_qat(model, per_tensor=bool(hp.get("qat_per_tensor", False)))
        ckpt["state_dict"] = remap_legacy_qat_state(ckpt["state_dict"], MODEL_PREFIX)
    state = {k[len(MODEL_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: weights do not fit the {hp['input_size']} model: "
                         f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    model.qat_guard = hp.get("qat_guard")  # a QAT run's guard: which weights it kept (QuantizationAwareTraining)
    return model
