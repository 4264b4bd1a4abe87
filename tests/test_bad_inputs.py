"""Bad-input corpus: each case builds its input in tmp_path and runs the real CLI in a subprocess.

Fail with exit 2 and one ``error:`` line naming the file (and line or field) and the fault:
  images, predict       corrupt_jpeg, truncated_jpeg, zero_byte_jpeg, missing_image
  images, evaluate      truncated_jpeg_in_yolo_set, zero_byte_image_in_yolo_set,
                        coco_size_disagrees_with_image
  YOLO labels           class_out_of_range, negative_size, zero_size, coordinate_above_one,
                        extra_column, non_numeric_text, every_label_file_empty
  COCO json             missing_annotations_key, annotation_without_bbox, unknown_image_id,
                        truncated_json, missing_image_file
  dataset paths         empty_dataset_folder, missing_dataset_path, images_without_labels
  checkpoints           missing_model_evaluate, missing_model_predict, corrupt_checkpoint,
                        truncated_checkpoint, zero_byte_checkpoint, unknown_model_suffix
  Keras .h5             truncated_h5, non_keras_h5, h5_unsupported_resolution,
                        h5_input_contradicts_layers, h5_mixed_width, h5_unsupported_alpha,
                        h5_other_resolution_than_size_flag
Skip with one ``warning:`` line giving the count (exit 0, the rest is evaluated):
  coco_zero_width_bbox, coco_box_outside_image, yolo_image_without_label_file, yolo_orphan_label_file
Must work (exit 0, the detection lands on the spot painted in the displayed image):
  predict               greyscale_png, greyscale_jpeg, cmyk_jpeg, png_16bit, rgba_png, exif_rotated_jpeg
  evaluate              exif_coco_stored_size, exif_coco_displayed_size, exif_yolo, non_rgb_modes_yolo
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from keras_writer import write_keras_h5
from ssd_mnv1 import build_model
from ssd_mnv1.checkpoint import save_checkpoint

# ------------------------------------------------------------------------------- spot detector
# A 192 checkpoint whose only detection is level-0 anchor 0 of cell SPOT_CELL, and only when the
# red channel is bright at that cell's sample pixel: every conv is zero except a centre-tap path
# carrying red (+1) from the input to P0 through conv1, blocks 1-5 and lateral 0, and one cls
# channel that turns it into a person logit. Offsets are zero, so the box is the anchor itself.

SPOT_CELL = (6, 16)                      # (column, row) on the 24x24 P0 grid
_CX, _CY = (SPOT_CELL[0] + 0.5) / 24, (SPOT_CELL[1] + 0.5) / 24
SPOT_BOX = (_CX - 0.13, _CY - 0.13, _CX + 0.13, _CY + 0.13)   # anchor size 0.26, ratio 1 (ST's 192)


def spot_detector() -> torch.nn.Module:
    model = build_model(input_size=192)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, torch.nn.BatchNorm2d):   # identity
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
        backbone = model.backbone
        backbone.conv1.conv.weight[0, 0, 1, 1] = 1.0     # red in [-1, 1] ...
        backbone.conv1.bn.bias[0] = 1.0                  # ... shifted to [0, 2] (survives ReLU6)
        for block in backbone.blocks[:5]:                # C5: stride 8, samples pixel 8k+7
            block.dw.conv.weight[0, 0, 1, 1] = 1.0
            block.pw.conv.weight[0, 0, 0, 0] = 1.0
        model.neck.lateral[0].conv.weight[0, 0, 0, 0] = 1.0
        for cls in model.head.cls:
            cls.conv.bias[1::2] = -20.0                  # every person logit off ...
        model.head.cls[0].conv.weight[1, 0, 1, 1] = 10.0  # ... but anchor 0 of P0: 10 * (red + 1 - 1)
        model.head.cls[0].conv.bias[1] = -10.0
    return model.eval()


def spot_mask(width: int, height: int) -> np.ndarray:
    """(H, W) bool: a 7x7 square around the pixel that ST's nearest resize to 192 samples for the cell."""
    row = int((8 * SPOT_CELL[1] + 7.5) * height / 192)
    col = int((8 * SPOT_CELL[0] + 7.5) * width / 192)
    mask = np.zeros((height, width), bool)
    mask[row - 3:row + 4, col - 3:col + 4] = True
    return mask


def spot_image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Black image (width x height) with a white spot where the spot detector looks."""
    m = spot_mask(width, height)
    if mode == "L":
        return Image.fromarray(np.where(m, 255, 0).astype(np.uint8), "L")
    if mode == "I;16":
        return Image.fromarray(np.where(m, 65535, 0).astype(np.uint16))   # mode I;16
    if mode == "RGBA":   # transparent background, half-transparent white spot: alpha is dropped
        arr = np.zeros((height, width, 4), np.uint8)
        arr[m] = (255, 255, 255, 128)
        return Image.fromarray(arr, "RGBA")
    if mode == "CMYK":   # ink: black background (K=255), no ink on the spot
        arr = np.zeros((height, width, 4), np.uint8)
        arr[..., 3] = np.where(m, 0, 255)
        return Image.fromarray(arr, "CMYK")
    arr = np.zeros((height, width, 3), np.uint8)
    arr[m] = 255
    return Image.fromarray(arr, "RGB")


def save_exif_rotated(displayed: Image.Image, path: Path) -> Path:
    """Store ``displayed`` turned 90 degrees, with EXIF orientation 6 so viewers turn it back."""
    exif = Image.Exif()
    exif[0x0112] = 6
    displayed.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def spot_box_px(width: int, height: int) -> list[float]:
    return [SPOT_BOX[0] * width, SPOT_BOX[1] * height, SPOT_BOX[2] * width, SPOT_BOX[3] * height]


def spot_yolo_line() -> str:
    x1, y1, x2, y2 = SPOT_BOX
    return f"0 {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}\n"


def spot_coco_bbox(width: int, height: int) -> list[float]:
    x1, y1, x2, y2 = spot_box_px(width, height)
    return [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]


# ------------------------------------------------------------------------------------ builders


def write_spot_checkpoint(path: Path) -> Path:
    return save_checkpoint(spot_detector(), path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_spot_checkpoint(tmp_path_factory.mktemp("model") / "spot.ckpt")


def small_image(path: Path, size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 10)).save(path)
    return path


def noisy_jpeg_bytes(size=(256, 256)) -> bytes:
    """A JPEG large enough that its header survives when the file is cut in half."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def yolo_set(root: Path, label: str, image: bytes | None = None) -> Path:
    """``root/a.jpg`` (small, or ``image`` bytes) + ``root/a.txt`` holding ``label``."""
    root.mkdir(parents=True, exist_ok=True)
    if image is None:
        small_image(root / "a.jpg")
    else:
        (root / "a.jpg").write_bytes(image)
    (root / "a.txt").write_text(label)
    return root


def coco_set(root: Path, mutate: Callable[[dict], object] | None = None) -> Path:
    """``root/annotations.json`` + ``root/images/a.jpg`` (64x48, one person box), then ``mutate``."""
    small_image(root / "images" / "a.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [8, 8, 20, 20]}],
            "categories": [{"id": 1, "name": "person"}]}
    if mutate is not None:
        mutate(data)
    (root / "annotations.json").write_text(json.dumps(data))
    return root / "annotations.json"


def h5_file(path: Path, input_size: int = 192, alpha: float = 0.25, **kwargs) -> Path:
    return write_keras_h5(build_model(alpha=alpha, input_size=192), path,
                          input_size=input_size, **kwargs)


def evaluate(model, data, *extra) -> list:
    return ["ssd_mnv1.evaluate", model, "--data", data, *extra]


def predict(model, images, out) -> list:
    return ["ssd_mnv1.predict", model, images, "--out", out]


# ------------------------------------------------------------------------------- error cases
# Each builder makes its bad input under ``tmp`` and returns (argv after -m, fragments that the
# one error line must contain). Fragments pin the file (with line or field) and what is wrong.

ERRORS: dict[str, Callable[[Path, Path], tuple[list, list[str]]]] = {}


def error_case(fn):
    ERRORS[fn.__name__] = fn
    return fn


@error_case
def budget_size_not_a_model_size(tmp, ckpt):
    return ["ssd_mnv1.footprint", "--size", "100", "--json", tmp / "b.json"], ["--size 100: unsupported input_size 100"]


@error_case
def budget_option_with_a_model(tmp, ckpt):
    return ["ssd_mnv1.footprint", ckpt, "--ram", "256"], ["--ram: for a configuration without weights (--size)"]


@error_case
def int8_outputs_without_an_int8_file(tmp, ckpt):
    return (["ssd_mnv1.export", ckpt, "--to", "onnx", "--int8-outputs", "--out", tmp / "out"],
            ["--int8-outputs applies to the int8 TFLite file"])


@error_case
def corrupt_jpeg(tmp, ckpt):
    bad = tmp / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)   # JPEG magic, then junk
    return predict(ckpt, bad, tmp / "out"), [f"{bad}: not a readable image", "corrupt header"]


@error_case
def truncated_jpeg(tmp, ckpt):
    data = noisy_jpeg_bytes()
    bad = tmp / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    return predict(ckpt, bad, tmp / "out"), [f"{bad}: image file is truncated"]


@error_case
def zero_byte_jpeg(tmp, ckpt):
    bad = tmp / "empty.jpg"
    bad.write_bytes(b"")
    return predict(ckpt, bad, tmp / "out"), [f"{bad}: empty file (0 bytes), not an image"]


@error_case
def missing_image(tmp, ckpt):
    return predict(ckpt, tmp / "nope.jpg", tmp / "out"), [f"{tmp / 'nope.jpg'}: no such image file"]


@error_case
def truncated_jpeg_in_yolo_set(tmp, ckpt):
    """The header is intact, so the set opens; decoding fails inside a DataLoader worker."""
    data = noisy_jpeg_bytes()
    root = yolo_set(tmp / "y", "0 0.5 0.5 0.2 0.2\n", image=data[: len(data) // 2])
    return evaluate(ckpt, root), [f"{root / 'a.jpg'}: image file is truncated"]


@error_case
def zero_byte_image_in_yolo_set(tmp, ckpt):
    root = yolo_set(tmp / "y", "0 0.5 0.5 0.2 0.2\n", image=b"")
    return evaluate(ckpt, root), [f"{root / 'a.jpg'}: empty file (0 bytes)"]


@error_case
def coco_size_disagrees_with_image(tmp, ckpt):
    """COCO sizes come from the json (no decoding at open); the mismatch shows when decoding."""
    path = coco_set(tmp / "c", lambda d: d["images"][0].update(width=100, height=100))
    return evaluate(ckpt, path), [f"{tmp / 'c' / 'images' / 'a.jpg'}: decoded image is 64x48",
                                  "images entry (id 1) says 100x100"]


def _yolo_line_case(line: str, *what: str):
    def build(tmp, ckpt):
        root = yolo_set(tmp / "y", f"0 0.5 0.5 0.2 0.2\n{line}\n")
        return evaluate(ckpt, root), [f"{root / 'a.txt'}:2: ", *what]
    return build


ERRORS.update({
    "class_out_of_range": _yolo_line_case("3 0.5 0.5 0.2 0.2", "class id 3 out of range", "ids 0..0"),
    "negative_size": _yolo_line_case("0 0.5 0.5 -0.2 0.2", "w = -0.2 is outside [0, 1]"),
    "zero_size": _yolo_line_case("0 0.5 0.5 0.2 0", "box width and height must be > 0", "h=0.0"),
    "coordinate_above_one": _yolo_line_case("0 1.5 0.5 0.2 0.2", "cx = 1.5 is outside [0, 1]"),
    "extra_column": _yolo_line_case("0 0.5 0.5 0.2 0.2 0.97", "expected 5 columns", "got 6"),
    "non_numeric_text": _yolo_line_case("0 0.5 half 0.2 0.2", "non-numeric coordinate", "half"),
})


@error_case
def every_label_file_empty(tmp, ckpt):
    """Nothing left to evaluate must not print an AP over zero images."""
    root = yolo_set(tmp / "y", "\n")
    return evaluate(ckpt, root), [f"{root}: dataset is empty", "class 'person'", "no_boxes=1"]


def _coco_case(mutate, *what: str):
    def build(tmp, ckpt):
        path = coco_set(tmp / "c", mutate)
        return evaluate(ckpt, path), [f"{path}: ", *what]
    return build


ERRORS.update({
    "missing_annotations_key": _coco_case(lambda d: d.pop("annotations"), "missing key 'annotations'"),
    "annotation_without_bbox": _coco_case(lambda d: d["annotations"][0].pop("bbox"),
                                          "annotations[0] has no 'bbox'"),
    "unknown_image_id": _coco_case(lambda d: d["annotations"][0].update(image_id=42),
                                   "annotations[0] (id 7) field 'image_id'", "unknown image id 42"),
})


@error_case
def truncated_json(tmp, ckpt):
    path = coco_set(tmp / "c")
    path.write_text(path.read_text()[:-30])
    return evaluate(ckpt, path), [f"{path}: not valid JSON", "line 1"]


@error_case
def missing_image_file(tmp, ckpt):
    path = coco_set(tmp / "c", lambda d: d["images"][0].update(file_name="gone.jpg"))
    return evaluate(ckpt, path), [f"{path}: images entry id 1 field 'file_name'",
                                  f"{tmp / 'c' / 'images' / 'gone.jpg'} does not exist"]


@error_case
def empty_dataset_folder(tmp, ckpt):
    (tmp / "data").mkdir()
    return evaluate(ckpt, tmp / "data"), [f"{tmp / 'data'}: folder is empty", "expected a COCO .json"]


@error_case
def missing_dataset_path(tmp, ckpt):
    return evaluate(ckpt, tmp / "nowhere"), [f"{tmp / 'nowhere'}: no such dataset file or folder"]


@error_case
def images_without_labels(tmp, ckpt):
    small_image(tmp / "pics" / "a.jpg")
    return evaluate(ckpt, tmp / "pics"), [f"{tmp / 'pics'}: not a dataset", "YOLO-Darknet folder"]


@error_case
def missing_model_evaluate(tmp, ckpt):
    return evaluate(tmp / "model.ckpt", coco_set(tmp / "c")), [f"{tmp / 'model.ckpt'}: no such model file"]


@error_case
def missing_model_predict(tmp, ckpt):
    image = small_image(tmp / "a.jpg")
    return predict(tmp / "model.h5", image, tmp / "out"), [f"{tmp / 'model.h5'}: no such model file"]


@error_case
def corrupt_checkpoint(tmp, ckpt):
    bad = tmp / "bad.ckpt"
    bad.write_bytes(bytes(range(256)) * 2)
    return evaluate(bad, coco_set(tmp / "c")), [f"{bad}: cannot read as a PyTorch checkpoint", "corrupt"]


@error_case
def truncated_checkpoint(tmp, ckpt):
    bad = tmp / "cut.ckpt"
    bad.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return evaluate(bad, coco_set(tmp / "c")), [f"{bad}: cannot read as a PyTorch checkpoint", "truncated"]


@error_case
def zero_byte_checkpoint(tmp, ckpt):
    bad = tmp / "empty.ckpt"
    bad.write_bytes(b"")
    return evaluate(bad, coco_set(tmp / "c")), [f"{bad}: empty file (0 bytes), not a checkpoint"]


@error_case
def unknown_model_suffix(tmp, ckpt):
    bad = tmp / "frozen.pb"
    bad.write_bytes(b"\x08\x01")
    return evaluate(bad, coco_set(tmp / "c")), [f"{bad}: unknown model file type '.pb'",
                                                  "expected one of .ckpt, .pt, .pth, .h5, .hdf5, .onnx, .tflite"]


def convert(h5, tmp) -> list:
    return ["ssd_mnv1.convert", h5, tmp / "out.ckpt"]


@error_case
def truncated_h5(tmp, ckpt):
    full = h5_file(tmp / "full.h5")
    bad = tmp / "cut.h5"
    bad.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    return convert(bad, tmp), [f"{bad}: cannot read as a Keras .h5 file", "truncated"]


@error_case
def non_keras_h5(tmp, ckpt):
    bad = tmp / "data.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("x", data=[1, 2, 3])
    return convert(bad, tmp), [f"{bad}: not a Keras weights file (no 'layer_names' attribute)"]


@error_case
def h5_unsupported_resolution(tmp, ckpt):
    bad = h5_file(tmp / "r200.h5", input_size=200)
    return convert(bad, tmp), [f"{bad}: input layer 'input_1' is 200x200", "multiple of 32 from 128 to 512"]


@error_case
def h5_input_contradicts_layers(tmp, ckpt):
    """A 192 detector whose input layer claims 256: the layer count gives it away."""
    bad = h5_file(tmp / "r256.h5", input_size=256)
    return convert(bad, tmp), [f"{bad}: the file has 17 ST-added conv2d layers, a 256x256 model has 22",
                               "17 is the count of a 192 model", "input layer 'input_1' says 256"]


@error_case
def h5_mixed_width(tmp, ckpt):
    """conv1 of an alpha-0.25 model spliced into an alpha-0.5 file."""
    narrow = build_model(alpha=0.25, input_size=192).backbone.conv1
    conv1 = {"kernel": narrow.conv.weight.detach().numpy().transpose(2, 3, 1, 0)}
    bn = {k: np.ones(8, np.float32) for k in ("gamma", "beta", "moving_mean", "moving_variance")}
    bad = h5_file(tmp / "mixed.h5", alpha=0.5, overrides={"conv1": conv1, "conv1_bn": bn})
    return convert(bad, tmp), [f"{bad}: layer 'conv_dw_1' depthwise_kernel has shape (3, 3, 16, 1)",
                               "expects (3, 3, 8, 1)"]


@error_case
def h5_unsupported_alpha(tmp, ckpt):
    bad = h5_file(tmp / "a12.h5", overrides={"conv1": {"kernel": np.zeros((3, 3, 3, 12), np.float32)}})
    return convert(bad, tmp), [f"{bad}: layer 'conv1' has 12 filters", "no supported alpha"]


@error_case
def h5_other_resolution_than_size_flag(tmp, ckpt):
    model = h5_file(tmp / "st_192.h5")
    return evaluate(model, coco_set(tmp / "c"), "--size", "224"), [
        "--size 224 does not match", f"{model}, whose input is 192x192"]


# -------------------------------------------------------------------------------- skip cases
# Exit 0, one warning line with the count (and examples); the remaining boxes are evaluated.

SKIPS: dict[str, Callable[[Path, Path], tuple[list, list[str]]]] = {}


def skip_case(fn):
    SKIPS[fn.__name__] = fn
    return fn


def _spot_coco(root: Path, extra_anns: list[dict]) -> Path:
    (root / "images").mkdir(parents=True)
    spot_image(256, 192).save(root / "images" / "s.png")
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": spot_coco_bbox(256, 192)}] + extra_anns
    data = {"images": [{"id": 1, "file_name": "s.png", "width": 256, "height": 192}],
            "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    (root / "annotations.json").write_text(json.dumps(data))
    return root / "annotations.json"


@skip_case
def coco_zero_width_bbox(tmp, ckpt):
    path = _spot_coco(tmp / "c", [{"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 40, 0, 12]}])
    return evaluate(ckpt, path), [f"{path}: skipped 1 box(es) with width or height <= 0",
                                  "annotations[1] (id 2) bbox [30, 40, 0, 12]"]


@skip_case
def coco_box_outside_image(tmp, ckpt):
    path = _spot_coco(tmp / "c", [{"id": 2, "image_id": 1, "category_id": 1, "bbox": [300, 40, 20, 12]}])
    return evaluate(ckpt, path), [f"{path}: skipped 1 box(es) lying entirely outside their image",
                                  "annotations[1] (id 2) bbox [300, 40, 20, 12] in a 256x192 image"]


@skip_case
def yolo_image_without_label_file(tmp, ckpt):
    root = tmp / "y"
    root.mkdir()
    spot_image(256, 192).save(root / "s.png")
    (root / "s.txt").write_text(spot_yolo_line())
    small_image(root / "unlabelled.jpg")
    return evaluate(ckpt, root), [f"{root}: skipped 1 image(s) without a label file",
                                  str(root / "unlabelled.jpg")]


@skip_case
def yolo_orphan_label_file(tmp, ckpt):
    root = tmp / "y"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    spot_image(256, 192).save(root / "images" / "s.png")
    (root / "labels" / "s.txt").write_text(spot_yolo_line())
    (root / "labels" / "lost.txt").write_text(spot_yolo_line())
    return evaluate(ckpt, root), [f"{root}: ignored 1 label file(s) without an image",
                                  str(root / "labels" / "lost.txt")]


# --------------------------------------------------------------------------- must-work cases

#: predict, one process for all: name -> (file name, how it is written)
PREDICT_IMAGES: dict[str, tuple[str, Callable[[Path], object]]] = {
    "greyscale_png": ("grey.png", lambda p: spot_image(256, 192, "L").save(p)),
    "greyscale_jpeg": ("grey.jpg", lambda p: spot_image(256, 192, "L").save(p, quality=95)),
    "cmyk_jpeg": ("cmyk.jpg", lambda p: spot_image(256, 192, "CMYK").save(p, quality=95)),
    "png_16bit": ("deep.png", lambda p: spot_image(256, 192, "I;16").save(p)),
    "rgba_png": ("alpha.png", lambda p: spot_image(256, 192, "RGBA").save(p)),
    "exif_rotated_jpeg": ("turned.jpg", lambda p: save_exif_rotated(spot_image(192, 256), p)),
}
#: displayed (width, height) of each
PREDICT_SIZES = {name: (192, 256) if name.startswith("exif") else (256, 192) for name in PREDICT_IMAGES}

#: evaluate, one process each; the spot detector scores ST-AP 100 only if pixels and boxes agree
WORKS: dict[str, Callable[[Path, Path], list]] = {}


def works_case(fn):
    WORKS[fn.__name__] = fn
    return fn


def _one_image_coco(root, width: int, height: int):
    """annotations.json for images/t.jpg declared as width x height, with the spot's box."""
    data = {"images": [{"id": 1, "file_name": "t.jpg", "width": width, "height": height}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": spot_coco_bbox(width, height)}],
            "categories": [{"id": 1, "name": "person"}]}
    (root / "annotations.json").write_text(json.dumps(data))
    return root


@works_case
def exif_coco_stored_size(tmp, ckpt):
    """COCO sizes and boxes describe the stored pixel grid (as in COCO itself): the EXIF turn is
    not applied, so the spot painted in the stored pixels meets the box."""
    root = tmp / "c"
    (root / "images").mkdir(parents=True)
    stored = spot_image(256, 192)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(root / "images" / "t.jpg", quality=95, exif=exif.tobytes())
    return evaluate(ckpt, _one_image_coco(root, 256, 192), "--json", tmp / "m.json")


@works_case
def exif_coco_displayed_size(tmp, ckpt):
    """COCO sizes of the displayed (EXIF-turned) image: boxes are in displayed pixels."""
    root = tmp / "c"
    (root / "images").mkdir(parents=True)
    save_exif_rotated(spot_image(192, 256), root / "images" / "t.jpg")
    return evaluate(ckpt, _one_image_coco(root, 192, 256), "--json", tmp / "m.json")


@works_case
def exif_yolo(tmp, ckpt):
    """YOLO fractions refer to the displayed image."""
    root = tmp / "y"
    root.mkdir()
    save_exif_rotated(spot_image(192, 256), root / "t.jpg")
    (root / "t.txt").write_text(spot_yolo_line())
    return evaluate(ckpt, root, "--json", tmp / "m.json")


@works_case
def non_rgb_modes_yolo(tmp, ckpt):
    """Greyscale, CMYK, 16-bit and RGBA files in one set: a miss on any one drops AP below 100."""
    root = tmp / "y"
    root.mkdir()
    for name in ("greyscale_png", "cmyk_jpeg", "png_16bit", "rgba_png"):
        file_name, write = PREDICT_IMAGES[name]
        write(root / file_name)
        (root / file_name).with_suffix(".txt").write_text(spot_yolo_line())
    return evaluate(ckpt, root, "--json", tmp / "m.json")


# ------------------------------------------------------------------------------------- running

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(argv: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *map(str, argv)], capture_output=True, text=True,
                          env=ENV, timeout=180)


def messages(stderr: str) -> list[str]:
    """stderr lines without tqdm progress bars."""
    return [line for line in stderr.splitlines() if line.strip() and not line.rstrip().endswith("batch/s]")]


def assert_one_error(res: subprocess.CompletedProcess, fragments: list[str]) -> None:
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = messages(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def st_ap(metrics_json: Path) -> float:
    return json.loads(metrics_json.read_text())["st_ap_20"]


@pytest.mark.parametrize("name", list(ERRORS))
@pytest.mark.slow
def test_bad_input_fails_with_one_line_naming_file_and_fault(name, tmp_path, ckpt):
    """Exit 2 and a single ``error:`` line with the path, line/field and fault - no traceback."""
    argv, fragments = ERRORS[name](tmp_path, ckpt)
    assert_one_error(run_cli(argv), fragments)


#: Every CLI that opens a model file, as argv after -m for a model path and a scratch folder.
MODEL_CLIS = {
    "evaluate": lambda m, tmp: evaluate(m, coco_set(tmp / "c")),
    "predict": lambda m, tmp: predict(m, small_image(tmp / "a.jpg"), tmp / "out"),
    "footprint": lambda m, tmp: ["ssd_mnv1.footprint", m],
    "export": lambda m, tmp: ["ssd_mnv1.export", m, "--to", "onnx", "--out", tmp / "out"],
    "convert": lambda m, tmp: ["ssd_mnv1.convert", m, tmp / "out.ckpt"],
    "fit": lambda m, tmp: ["ssd_mnv1.fit", "fit", "--config", Path(__file__).parents[1] / "lightning_configs" /
                           "quickstart.yaml", "--seed_everything", "false", "--model.weights", m,
                           "--trainer.default_root_dir", tmp / "runs"],
}
BROKEN_MODEL_FILES = {
    "truncated_checkpoint": ("cut.ckpt", lambda ckpt: ckpt.read_bytes()[: ckpt.stat().st_size // 2],
                             "cannot read as a PyTorch checkpoint"),
    "text_named_h5": ("notes.h5", lambda ckpt: b"not an HDF5 file\n", "cannot read as a Keras .h5 file"),
}


@pytest.mark.parametrize("broken", list(BROKEN_MODEL_FILES))
@pytest.mark.parametrize("cli", list(MODEL_CLIS))
@pytest.mark.slow
def test_every_cli_opening_a_model_gives_one_error_line_for_a_broken_file(cli, broken, tmp_path, ckpt):
    """All model files are opened by one loader, so every CLI reports a broken one the same way."""
    name, content, fault = BROKEN_MODEL_FILES[broken]
    bad = tmp_path / name
    bad.write_bytes(content(ckpt))
    assert_one_error(run_cli(MODEL_CLIS[cli](bad, tmp_path)), [f"{bad}: {fault}"])


@pytest.mark.parametrize("name", list(SKIPS))
@pytest.mark.slow
def test_skipped_input_is_counted_in_one_warning_and_the_rest_evaluated(name, tmp_path, ckpt):
    """What is left out is reported with its count; the good box still scores 100."""
    argv, fragments = SKIPS[name](tmp_path, ckpt)
    res = run_cli([*argv, "--json", tmp_path / "m.json"])
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stderr
    lines = messages(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("warning: "), res.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert st_ap(tmp_path / "m.json") == 100.0


@pytest.mark.parametrize("name", list(WORKS))
@pytest.mark.slow
def test_unusual_but_valid_images_evaluate_with_boxes_in_place(name, tmp_path, ckpt):
    """Exit 0, no warning, and ST-AP 100: the decoded pixels and the ground truth agree."""
    res = run_cli(WORKS[name](tmp_path, ckpt))
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert messages(res.stderr) == [], res.stderr
    assert st_ap(tmp_path / "m.json") == 100.0


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, ckpt) -> tuple[subprocess.CompletedProcess, dict]:
    """One predict run over every must-work image; detections keyed by file name."""
    tmp = tmp_path_factory.mktemp("predict")
    (tmp / "in").mkdir()
    for file_name, write in PREDICT_IMAGES.values():
        write(tmp / "in" / file_name)
    res = run_cli(predict(ckpt, tmp / "in", tmp / "out"))
    report = json.loads((tmp / "out" / "detections.json").read_text()) if res.returncode == 0 else {"images": []}
    return res, {Path(e["image"]).name: e for e in report["images"]}


@pytest.mark.parametrize("name", list(PREDICT_IMAGES))
@pytest.mark.slow
def test_unusual_but_valid_image_predicts_the_spot_in_displayed_pixels(name, predicted):
    """Each mode decodes to the right RGB pixels, EXIF turned, and the box is in displayed pixels."""
    res, by_file = predicted
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    entry = by_file[PREDICT_IMAGES[name][0]]
    width, height = PREDICT_SIZES[name]
    assert (entry["width"], entry["height"]) == (width, height)
    assert len(entry["detections"]) == 1
    np.testing.assert_allclose(entry["detections"][0]["box"], spot_box_px(width, height), atol=0.02)
    assert entry["detections"][0]["score"] > 0.99


def test_spot_detector_finds_the_spot_where_it_is():
    """Guards the corpus' instrument: one box on the spot, a moved spot moves the box, none none."""
    from ssd_mnv1.postprocess import postprocess
    from ssd_mnv1.preprocess import preprocess

    model = spot_detector()
    here = np.asarray(spot_image(192, 192))
    elsewhere = np.ascontiguousarray(here.transpose(1, 0, 2))
    found = []
    for image in (here, elsewhere, np.zeros_like(here)):
        with torch.no_grad():
            det = postprocess(*model(preprocess(image, 192)[None]), score_threshold=0.5)[0]
        found.append(det.boxes.numpy())
    np.testing.assert_allclose(found[0], [SPOT_BOX], atol=1e-6)
    np.testing.assert_allclose(found[1], [[SPOT_BOX[1], SPOT_BOX[0], SPOT_BOX[3], SPOT_BOX[2]]], atol=1e-6)
    assert len(found[2]) == 0
    assert re.fullmatch(r"0( \d\.\d{6}){4}\n", spot_yolo_line())
