"""Shared fixtures. ST's reference files are read from ../shared/reference and never copied."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

# Under pytest-xdist each worker gets one core's worth of torch threads (2 workers on 2 cores),
# instead of every worker spinning up a thread per core; SSD_MNV1_CPUS tells the training CPU plan
# (ssd_mnv1.cpus) the same, also in the CLI subprocesses the tests start.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
    os.environ["SSD_MNV1_CPUS"] = "1"


@pytest.fixture(scope="session", autouse=True)
def image_cache_dir(tmp_path_factory) -> Path:
    """Decoded-image caches and zoo downloads of the tests go to temporary folders, not the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("image_cache")
    os.environ["SSD_MNV1_CACHE"] = str(folder)
    os.environ["SSD_MNV1_HOME"] = str(tmp_path_factory.mktemp("zoo_home"))
    return folder

SHARED = Path(os.environ.get("SSD_MNV1_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """ST's files (``ssd_mnv1.zoo`` names them); skips the test when they are absent."""
    reference = SHARED / "reference"
    if not (reference / "test_vectors").is_dir():
        pytest.skip(f"ST reference files not present at {reference}")
    return reference


@pytest.fixture(scope="session")
def coco_person_val() -> Path:
    """The shared COCO-person val subset (690 images); skips the test when it is absent."""
    return _shared_dataset("coco2017_person_val")


@pytest.fixture(scope="session")
def coco_person_train() -> Path:
    """The shared COCO-person train subset (167 images); skips the test when it is absent."""
    return _shared_dataset("coco2017_person_train")


def _shared_dataset(name: str) -> Path:
    root = SHARED / "data" / name
    if not (root / "annotations.json").is_file():
        pytest.skip(f"{root} not present")
    return root


@pytest.fixture(scope="session")
def trained_like_model():
    """Factory of a seeded detector whose BatchNorms are not the identity, as after training, so
    that BN folding and quantization ranges have something to do."""
    import torch

    from ssd_mnv1 import build_model

    def make(input_size: int = 192, class_names=None):
        torch.manual_seed(0)
        model = build_model(input_size=input_size, class_names=class_names)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_var.uniform_(0.5, 2.0)
                    m.running_mean.uniform_(-0.2, 0.2)
        return model.eval()

    return make


def _tiny_export(tmp_path_factory, trained_like_model, name: str, *, input_size: int = 192, class_names=None,
                 to="tflite-int8", calib_count: int = 6, **kwargs):
    """(model, ExportResult, root) of one real float -> int8 export of the seeded model at
    ``input_size`` (default: 192, one class): ``root/tiny.ckpt`` and ``root/calib`` (``calib_count``
    random JPEGs, all used for calibration)."""
    pytest.importorskip("onnx2tf")
    import numpy as np
    from PIL import Image

    from ssd_mnv1.checkpoint import save_checkpoint
    from ssd_mnv1.export.pipeline import export

    root = tmp_path_factory.mktemp(name)
    calib = root / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(calib_count):
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(calib / f"{i}.jpg")
    model = trained_like_model(input_size, class_names)
    ckpt = save_checkpoint(model, root / "tiny.ckpt")
    result = export(ckpt, root / "out", to, calib=calib, calib_count=calib_count, log=lambda *_: None, **kwargs)
    return model, result, root


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, trained_like_model):
    """:func:`_tiny_export` as a factory, for tests that export at other sizes or class lists."""
    return functools.partial(_tiny_export, tmp_path_factory, trained_like_model)


@pytest.fixture(scope="session")
def tiny_int8_export(tmp_path_factory, trained_like_model):
    """The dynamic-batch export of :func:`_tiny_export`, shared by the export and ledger tests (one
    onnx2tf run, ~1 min)."""
    return _tiny_export(tmp_path_factory, trained_like_model, "tiny_int8_export")


@pytest.fixture(scope="session")
def tiny_mcu_export(tmp_path_factory, trained_like_model):
    """The ``--mcu`` export of :func:`_tiny_export` (static batch 1, for TensorFlow Lite Micro)."""
    return _tiny_export(tmp_path_factory, trained_like_model, "tiny_mcu_export", mcu=True)
