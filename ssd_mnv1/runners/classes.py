"""Which class names a runner's detections carry: the model's own, ``--classes``, or ST's ``person``."""

from __future__ import annotations

import os

import numpy as np
import torch


def score_columns(runner) -> int:
    """Width of the runner's scores output (background + one column per class): a PyTorch
    model says it, any other file answers one blank image."""
    model = getattr(runner, "model", None)
    if isinstance(model, torch.nn.Module) and hasattr(model, "num_classes"):
        return int(model.num_classes) + 1
    size = runner.input_size
    return int(runner(np.zeros((1, size, size, 3), np.uint8))[0].shape[-1])


def model_class_names(runner, classes=None, path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The class names (label 1, 2, ... in order) to evaluate or draw ``runner``'s detections with.

    The model's stored names win (a checkpoint, an ``.h5`` run in PyTorch); ``classes`` (the
    ``--classes`` option) must then equal them. A file without names (``.onnx``, ``.tflite``)
    takes ``classes``, whose count must fit its score columns, or is ``person`` when it has ST's
    two columns (background, person). Every mismatch is one ValueError naming the file and both sides.
    """
    where = path if path is not None else runner.name
    given = None if classes is None else tuple(str(c) for c in classes)
    if given is not None:
        if not given:
            raise ValueError("--classes is empty: give at least one class name")
        if len(set(given)) != len(given):
            raise ValueError(f"--classes has duplicates: {list(given)}")
    stored = getattr(runner, "class_names", None)
    if stored is not None:
        stored = tuple(stored)
        if given is not None and given != stored:
            raise ValueError(f"--classes {list(given)} differs from the classes stored in {where}, "
                             f"{list(stored)}: drop --classes or give exactly those names, in that order")
        return stored
    columns = score_columns(runner)
    if given is None:
        if columns == 2:
            return ("person",)
        raise ValueError(f"{where} has {columns} score columns (background + {columns - 1} classes) and does "
                         f"not store class names: pass --classes with its {columns - 1} names, in label order")
    if columns != 1 + len(given):
        raise ValueError(f"{where} has {columns} score columns (background + {columns - 1} classes) but "
                         f"--classes gives {len(given)} name(s) {list(given)}: give {columns - 1}")
    return given
