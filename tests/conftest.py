"""Shared fixtures. ST's reference files are read from ../shared/reference and never copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Under pytest-xdist each worker gets one core's worth of torch threads (2 workers on 2 cores),
# instead of every worker spinning up a thread per core.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SSD_MNV1_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "test_vectors").is_dir():
        pytest.skip(f"ST reference files not present at {REFERENCE}")
    return REFERENCE


def st_h5(reference: Path, size: int) -> Path:
    return reference / f"st_ssd_mobilenet_v1_025_{size}" / f"st_ssd_mobilenet_v1_025_{size}.h5"
