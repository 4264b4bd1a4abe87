"""The input contract, exactly as ST: RGB, stretch to SxS ("fit", no letterbox), then x/127.5 - 1.

Everything that turns an image file into the network's input lives here: the image suffixes the
tools accept, decoding (PIL, or TensorFlow's JPEG decoder as ST's code uses), the resize, the
normalization (numpy and torch) and the int8 input quantization of the exported file.

ST resizes with ``tf.image.resize(method='nearest')``: half-pixel centres, source index
``min(floor((i + 0.5) * in/out), in - 1)`` computed in float32. That is neither PyTorch's legacy
``nearest`` nor reliably PIL's NEAREST, so the indices are gathered explicitly here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

INTERPOLATIONS = ("nearest", "bilinear")
#: Image decoders: PIL (no TensorFlow needed) or TensorFlow's JPEG decoder, which ST's code uses and
#: whose IDCT differs from libjpeg's by a few levels on most pixels.
DECODERS = ("pil", "tf")
#: Image files every tool accepts (folders are scanned for these, case-insensitively).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: The int8 file's uint8 input: real = (q - 127) / 127.5, so raw pixels feed it directly (ST's contract).
INPUT_SCALE = 1.0 / 127.5
INPUT_ZERO_POINT = 127


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def load_image(path: str | os.PathLike, decoder: str = "pil") -> np.ndarray:
    """Decode an image file to uint8 HWC RGB.

    ``pil`` applies EXIF orientation and reads greyscale/RGBA/CMYK/16-bit files; ``tf`` decodes as
    ST's code does (``tf.io.decode_image(channels=3)``: TF's fast integer IDCT, EXIF ignored) and
    needs TensorFlow (the export extra).
    """
    path = Path(path)
    if decoder == "tf":
        return _decode_tf(path)
    if decoder != "pil":
        raise ValueError(f"unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return pil_to_rgb(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise image_error(path, exc) from None


def _decode_tf(path: Path) -> np.ndarray:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError:
        raise ValueError("--decoder tf needs tensorflow; install the export extra "
                         "(pip install -e '.[export]') or use --decoder pil") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        data = tf.io.read_file(str(path))
        return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as exc:
        raise ValueError(f"{path}: TensorFlow cannot decode this image ({exc.message})") from None


def image_error(path: Path, exc: Exception) -> ValueError:
    """A one-line ValueError naming ``path`` and saying what is wrong with it, from PIL's exception."""
    try:
        empty = path.stat().st_size == 0
    except OSError:
        empty = False
    if empty:
        return ValueError(f"{path}: empty file (0 bytes), not an image")
    if isinstance(exc, UnidentifiedImageError):
        return ValueError(f"{path}: not a readable image (unknown format or corrupt header)")
    if isinstance(exc, Image.DecompressionBombError):
        return ValueError(f"{path}: image is too large to decode safely ({exc})")
    if isinstance(exc, IsADirectoryError):
        return ValueError(f"{path}: is a folder, not an image file")
    if "truncated" in str(exc).lower():
        return ValueError(f"{path}: image file is truncated (it ends before the image data does)")
    return ValueError(f"{path}: corrupt image, cannot decode it ({exc})")


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """PIL image of any mode to uint8 HWC RGB (16-bit greyscale is scaled, alpha is dropped)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(np.round(arr * 255.0 / peak), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _as_uint8_hwc(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected a uint8 HxWx3 RGB array or a PIL image, got {arr.dtype} {arr.shape}")
    return arr


def tf_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of TF2's half-pixel nearest resize (float32 arithmetic, as TF does)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale)
    return np.minimum(src.astype(np.int64), in_size - 1)


def _bilinear_taps(n_in: int, n_out: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Source indices and weights of a half-pixel bilinear resize along one axis (float32, as TF)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    upper = (src - low.astype(np.float32)).astype(np.float32)
    return (low, high), (np.float32(1) - upper, upper)


def resize(image, size: int, interpolation: str = "nearest") -> np.ndarray:
    """Stretch to ``size x size``: uint8 HWC for ``nearest``, float32 HWC (0..255) for ``bilinear``.

    Bilinear is TF's ``tf.image.resize(..., 'bilinear')`` (half-pixel centres, no antialias), which
    is ``F.interpolate(mode='bilinear', align_corners=False)`` to float32 rounding. It is computed
    here in numpy, rows then columns, because ``F.interpolate`` rounds differently with one torch
    thread and with more (1 LSB in ~0.1 % of the uint8 pixels, measured): the training image cache,
    and so a seeded training run, would depend on the thread count of the process that built it.
    """
    arr = _as_uint8_hwc(image)
    if interpolation == "nearest":
        rows = tf_nearest_indices(arr.shape[0], size)
        cols = tf_nearest_indices(arr.shape[1], size)
        return arr[rows][:, cols]
    if interpolation == "bilinear":
        rows, row_weights = _bilinear_taps(arr.shape[0], size)
        cols, col_weights = _bilinear_taps(arr.shape[1], size)
        pixels = arr.astype(np.float32)
        pixels = pixels[rows[0]] * row_weights[0][:, None, None] + pixels[rows[1]] * row_weights[1][:, None, None]
        return pixels[:, cols[0]] * col_weights[0][None, :, None] + pixels[:, cols[1]] * col_weights[1][None, :, None]
    raise ValueError(f"unknown interpolation {interpolation!r}: choose one of {', '.join(INTERPOLATIONS)}")


def resize_uint8(image, size: int, interpolation: str = "nearest") -> np.ndarray:
    """:func:`resize` rounded to uint8 (bilinear gives float): what training augments, as cv2 would."""
    pixels = resize(image, size, interpolation)
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    return pixels


def normalize(pixels):
    """Pixels 0..255 (numpy or torch, any layout) -> float32 x/127.5 - 1, in float32 as TF computes it."""
    if isinstance(pixels, torch.Tensor):
        return pixels.float() / 127.5 - 1.0
    return np.asarray(pixels).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def to_tensor(pixels) -> torch.Tensor:
    """HWC pixels (uint8 or float 0..255) -> normalized float CHW tensor."""
    return torch.from_numpy(normalize(np.ascontiguousarray(pixels))).permute(2, 0, 1)


def preprocess(image, size: int, interpolation: str = "nearest") -> torch.Tensor:
    """uint8 HWC RGB array or PIL image -> float tensor ``(3, size, size)`` ready for the model."""
    return to_tensor(resize(image, size, interpolation))
