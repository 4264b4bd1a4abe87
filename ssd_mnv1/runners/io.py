"""What every runner shares: the runner interface, the uint8 input conventions of int8 files
(ST's host conversions), the input preparation of TFLite/TFLM files, and which output is which.

A runner takes a batch of images already stretched to SxS (uint8 NHWC, as ST's evaluation and the
device see them) and returns ST's three float outputs ``(scores, offsets, anchors)`` as numpy arrays;
a file with int8 outputs (``export --outputs int8``: scores and offsets, no anchors) gets them
dequantized and the anchors its float twin would output (:func:`ssd_mnv1.anchors.deployed_anchors`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..anchors import deployed_anchors, generate_anchors
from ..int8 import dequantize
from ..preprocess import normalize

#: uint8 input of an int8 TFLite file: ``raw`` pixels (the STM32 firmware), ``st`` = ST 2.0's host
#: conversion (the code behind the 2.0 card), ``st25`` = the 2025 code's truncating conversion.
INT8_INPUT_MODES = ("raw", "st", "st25")


class Runner(Protocol):
    name: str
    input_size: int
    class_names: tuple[str, ...] | None

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def st_host_quantize(images: np.ndarray, scale: float, zero_point: int, mode: str = "st") -> np.ndarray:
    """ST's host-side uint8 conversion of the normalized image (docs/st_model.md §5, §7.2).

    ``st`` (2.0): x = p * float32(1/127.5) - 1 in float32 (``tf.cast(image, float32) * scale +
    offset``), then q = round(x / scale + zp): float noise makes 192 of the 256 pixel values map to
    q = p and the rest to p - 1. ``st25`` (2025): q = uint8-cast(x / scale + zp), a truncation, so
    q = p - 1 for p >= 1 and 0 for p = 0. The device instead gets the raw pixels.
    """
    if mode not in ("st", "st25"):
        raise ValueError(f"unknown host conversion {mode!r}; expected 'st' or 'st25'")
    x = images.astype(np.float32) * np.float32(1.0 / 127.5) - np.float32(1.0)
    v = x / float(scale) + float(zero_point)  # float32 array / Python float stays float32, as in ST
    if mode == "st":
        v = np.round(v)
    return np.clip(np.trunc(v), 0, 255).astype(np.uint8)


def prepare_quantized_input(image: np.ndarray, dtype: np.dtype, quantization: tuple[float, int],
                            mode: str) -> np.ndarray:
    """One SxSx3 uint8 image as the ``(1, S, S, 3)`` input of a TFLite/TFLM file whose input is
    ``dtype`` (float32: normalized; uint8; int8: the uint8 value with the zero point shifted by 128)
    and ``quantization`` (scale, zero point), the pixels converted as ``mode`` (:data:`INT8_INPUT_MODES`)."""
    scale, zp = quantization
    if dtype == np.float32:
        return normalize(image[None])
    if dtype == np.uint8:
        if mode == "raw":
            return image[None].astype(np.uint8)
        return st_host_quantize(image[None], scale, zp, mode)
    if dtype == np.int8:  # same real value as uint8 with zp shifted by 128
        q = image[None].astype(np.int16) if mode == "raw" else \
            st_host_quantize(image[None], scale, zp + 128, mode).astype(np.int16)
        return (q - 128).astype(np.int8)
    raise ValueError(f"unsupported input dtype {dtype}; expected float32, uint8 or int8")


def check_int8_input(mode: str) -> str:
    """``mode`` if it is one of :data:`INT8_INPUT_MODES`; else the ``--int8-input`` error."""
    if mode not in INT8_INPUT_MODES:
        raise ValueError(f"--int8-input must be one of {', '.join(INT8_INPUT_MODES)}, got {mode!r}")
    return mode


#: Largest |difference| between an output and the model's anchors for it to be the anchors output
#: (ST's files hold them as int8: one quantization step of their range is about 0.005).
ANCHORS_TOLERANCE = 0.01
#: How far a probability may stray outside [0, 1]: float rounding of a softmax.
_PROBABILITY_SLACK = 1e-6


def output_roles(outputs: list[np.ndarray], anchors: np.ndarray | None = None) -> list[str]:
    """What each output of one batch is, by content, never by name or position: ``anchors``,
    ``scores``, ``offsets`` or ``other``.

    Converters reorder and rename outputs (onnx2tf, TFLite), and with three classes the scores are
    4 wide like the boxes, so only content tells them apart:

    * ``anchors``: 4 wide, and equal to ``anchors`` (the model's, ``(NA, 4)``) for every image
      within :data:`ANCHORS_TOLERANCE` when they are known (a runner), else the same for every
      image of a batch of two or more (the contract check, which reads an unknown file);
    * ``scores``: of the others whose values are probabilities (in [0, 1]), the one whose rows come
      nearest to summing to 1 (mean |row sum - 1|): a softmax's rows, even int8-rounded over many
      classes;
    * ``offsets``: the other 4-wide outputs; ``other``: the rest.
    """
    roles = ["other"] * len(outputs)
    for i, out in enumerate(outputs):
        if out.shape[-1] != 4:
            continue
        if anchors is not None:
            is_anchors = out.shape[1:] == anchors.shape and float(np.abs(out - anchors).max()) <= ANCHORS_TOLERANCE
        else:
            is_anchors = out.shape[0] > 1 and all(np.array_equal(out[0], o) for o in out[1:])
        if is_anchors:
            roles[i] = "anchors"
    probabilities = [i for i, out in enumerate(outputs) if roles[i] == "other" and out.size
                     and out.min() >= -_PROBABILITY_SLACK and out.max() <= 1 + _PROBABILITY_SLACK]
    if probabilities:
        roles[min(probabilities, key=lambda i: float(np.abs(outputs[i].sum(-1) - 1).mean()))] = "scores"
    for i, out in enumerate(outputs):
        if roles[i] == "other" and out.shape[-1] == 4:
            roles[i] = "offsets"
    return roles


def float_output(values: np.ndarray, quantization: tuple[float, int]) -> np.ndarray:
    """An output as float32: an int8/uint8 one dequantized as TFLM's DEQUANTIZE would (scale 0: not quantized)."""
    scale, zero_point = quantization
    if values.dtype in (np.int8, np.uint8) and scale:
        return dequantize(values, scale, zero_point)
    return values.astype(np.float32)


def identify_outputs(outputs: list[np.ndarray], input_size: int) -> tuple[np.ndarray, ...]:
    """The model's outputs in ST's order (scores, offsets, anchors), by :func:`output_roles` with the
    anchors of the ``input_size`` model. Two outputs are an int8-output file's scores and offsets:
    the anchors are the ones its float twin outputs."""
    if len(outputs) == 2:
        batch = outputs[0].shape[0]
        deployed = deployed_anchors(input_size)
        anchors = np.broadcast_to(deployed, (batch, *deployed.shape))
        outputs = [*outputs, np.ascontiguousarray(anchors)]
    if len(outputs) != 3:
        raise ValueError(f"expected 3 outputs (scores, offsets, anchors) or 2 (int8 scores, offsets), the model "
                         f"has {len(outputs)}")
    ref = generate_anchors(input_size).numpy()
    roles = output_roles(outputs, ref)
    if "anchors" not in roles:
        raise ValueError(f"no output matches the {input_size} model's anchors {ref.shape}; "
                         f"output shapes are {[o.shape for o in outputs]}")
    if sorted(roles) != ["anchors", "offsets", "scores"]:
        raise ValueError(f"cannot tell the scores from the offsets by content: outputs of shapes "
                         f"{[o.shape for o in outputs]} read as {roles}")
    return tuple(outputs[roles.index(role)] for role in ("scores", "offsets", "anchors"))
