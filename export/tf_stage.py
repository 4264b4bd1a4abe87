"""ONNX -> TensorFlow SavedModel (onnx2tf) -> TFLite float32 / full-integer int8.

onnx2tf writes only the float SavedModel here; quantization is done by TensorFlow's own converter
with builtin int8 ops only, so a Flex/select-TF op fails loudly instead of slipping in (onnx2tf's
int8 path allows SELECT_TF_OPS). Workarounds for onnx2tf, each found by measurement:
it downloads a calibration sample on every run (we provide the file so it never goes online) and
it shells out to the ``onnxsim`` CLI (we put the venv's bin on PATH and fail if it was not found).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Iterable

import numpy as np

_ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")


@contextlib.contextmanager
def _onnx2tf_environment(workdir: Path):
    """cwd with onnx2tf's calibration sample, and the venv's bin (onnxsim CLI) on PATH."""
    workdir.mkdir(parents=True, exist_ok=True)
    sample = workdir / _ONNX2TF_SAMPLE
    if not sample.exists():
        rng = np.random.default_rng(0)
        np.save(sample, rng.random((20, 128, 128, 3), dtype=np.float32))
    old_cwd, old_path = os.getcwd(), os.environ.get("PATH", "")
    os.chdir(workdir)
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + old_path
    try:
        yield
    finally:
        os.chdir(old_cwd)
        os.environ["PATH"] = old_path


def onnx_to_saved_model(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, workdir: str | os.PathLike) -> Path:
    """Convert with onnx2tf (float only); raises if onnx2tf could not run onnxsim."""
    quiet_tensorflow()
    import onnx2tf

    onnx_path, out_dir = Path(onnx_path).resolve(), Path(out_dir).resolve()
    _reset_keras_names()
    log = io.StringIO()
    with _onnx2tf_environment(Path(workdir).resolve()), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=str(out_dir),
                        non_verbose=True, copy_onnx_input_output_names_to_tflite=False)
    text = log.getvalue()
    if "Failed to optimize" in text:
        raise RuntimeError(f"onnx2tf could not run onnxsim (a known cause of silently wrong models):\n{text[-2000:]}")
    if not (out_dir / "saved_model.pb").is_file():
        raise RuntimeError(f"onnx2tf wrote no SavedModel to {out_dir}:\n{text[-2000:]}")
    for extra in out_dir.glob("*.tflite"):  # onnx2tf's own float files; ours are written below
        extra.unlink()
    return out_dir


def _reset_keras_names() -> None:
    """Restart Keras's layer-name counters, which name the file's tensors (``model_31/...``): without
    this, an export's bytes depend on how many exports ran before it in the process."""
    import tf_keras

    tf_keras.backend.clear_session()


def _converter(saved_model_dir: Path):
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return conv


def to_tflite_float(saved_model_dir: str | os.PathLike) -> bytes:
    return _converter(Path(saved_model_dir)).convert()


def to_tflite_int8(saved_model_dir: str | os.PathLike, calibration: Iterable[np.ndarray], *,
                   per_tensor: bool = False) -> bytes:
    """Full-integer int8 with uint8 input (scale 1/127.5, zp 127) and float32 outputs.

    ``calibration`` yields float32 NHWC images in [-1, 1] (x/127.5 - 1), one per step, as ST's
    representative dataset does. The input range is pinned to exactly [-1, 1] so that the input
    quantization is ST's whatever the calibration images are.
    """
    import tensorflow as tf

    images = [np.asarray(c, dtype=np.float32).reshape(1, *np.shape(c)[-3:]) for c in calibration]
    if not images:
        raise ValueError("int8 export needs at least one calibration image")
    first = images[0].copy()
    first.reshape(-1)[:2] = (-1.0, 1.0)  # two pixels pin the input range to [-1, 1]
    images[0] = first

    def representative():
        for x in images:
            yield [x]

    conv = _converter(Path(saved_model_dir))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.float32
    if per_tensor:
        conv._experimental_disable_per_channel = True  # STM32MP25 NPU wants per-tensor weights
    return conv.convert()
