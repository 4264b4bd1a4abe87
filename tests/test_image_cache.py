"""The decoded-image cache gives the pixels decoding gives, is reused, and survives a killed build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ssd_mnv1.data import open_dataset
from ssd_mnv1.data.cache import ResizedImageCache, cache_key
from ssd_mnv1.preprocess import resize_uint8
from ssd_mnv1.training import NO_AUGMENTATION, Augmentation, DetectionDataModule, SyntheticPersons
from ssd_mnv1.training.data import DetectionSamples

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_images(tmp_path_factory, coco_person_val):
    """A 12-image COCO dataset (real JPEGs of several sizes) in a folder of its own."""
    import json
    import shutil

    src = json.loads((coco_person_val / "annotations.json").read_text())
    root = tmp_path_factory.mktemp("real12")
    (root / "images").mkdir()
    images = src["images"][:12]
    for im in images:
        shutil.copy(coco_person_val / "images" / im["file_name"], root / "images" / im["file_name"])
    ids = {im["id"] for im in images}
    src.update(images=images, annotations=[a for a in src["annotations"] if a["image_id"] in ids])
    (root / "annotations.json").write_text(json.dumps(src))
    return root


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_cached_pixels_equal_decoding_each_time(real_images, tmp_path, interpolation):
    dataset = open_dataset(real_images)
    cache = ResizedImageCache.open_or_build(dataset, 224, interpolation, tmp_path, progress=False, log=print)
    for i in range(len(dataset)):
        np.testing.assert_array_equal(cache[i], resize_uint8(dataset[i][0], 224, interpolation))


def test_training_batches_are_identical_with_and_without_the_cache(real_images, tmp_path):
    def first_batch(cache: bool) -> dict:
        dm = DetectionDataModule(train=str(real_images), val=str(real_images), input_size=192, batch_size=4,
                                 num_workers=0, cache=cache, cache_dir=str(tmp_path), augmentation=Augmentation())
        dm.setup("fit")
        torch.manual_seed(0)
        return next(iter(dm.train_dataloader()))

    a, b = first_batch(True), first_batch(False)
    assert torch.equal(a["images"], b["images"])
    assert all(torch.equal(x, y) for x, y in zip(a["boxes"], b["boxes"]))


def test_cache_is_reused_and_keyed_on_file_contents(real_images, tmp_path):
    dataset = open_dataset(real_images)
    messages: list[str] = []
    first = ResizedImageCache.open_or_build(dataset, 160, "nearest", tmp_path, progress=False, log=messages.append)
    built = len(messages)
    assert built and "building" in messages[0]
    again = ResizedImageCache.open_or_build(dataset, 160, "nearest", tmp_path, progress=False, log=messages.append)
    assert again.path == first.path and len(messages) == built  # reused, nothing rebuilt
    assert cache_key(dataset, 192, "nearest")[0] != cache_key(dataset, 160, "nearest")[0]
    assert cache_key(dataset, 160, "bilinear")[0] != cache_key(dataset, 160, "nearest")[0]
    image = Path(dataset.records[0].file)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # an edited file
    assert cache_key(open_dataset(real_images), 160, "nearest")[0] != first.path.stem


def test_synthetic_and_subset_datasets_have_their_own_keys():
    a, b = SyntheticPersons(4, seed=0), SyntheticPersons(4, seed=1)
    assert cache_key(a, 96, "nearest")[0] != cache_key(b, 96, "nearest")[0]
    assert cache_key(a, 96, "nearest")[0] == cache_key(SyntheticPersons(4, seed=0), 96, "nearest")[0]


def test_truncated_cache_is_detected_and_rebuilt(tmp_path):
    dataset = SyntheticPersons(6, seed=3, size=96)
    cache = ResizedImageCache.open_or_build(dataset, 64, "nearest", tmp_path, progress=False, log=lambda m: None)
    expected = np.stack([cache[i] for i in range(len(dataset))])
    with open(cache.path, "r+b") as f:  # as if a copy or a write stopped half-way
        f.truncate(cache.path.stat().st_size // 2)
    messages: list[str] = []
    again = ResizedImageCache.open_or_build(dataset, 64, "nearest", tmp_path, progress=False, log=messages.append)
    assert "expected" in messages[0] and "rebuilding" in messages[0]
    np.testing.assert_array_equal(np.stack([again[i] for i in range(len(dataset))]), expected)


def test_failed_build_leaves_no_file(tmp_path):
    class Broken(SyntheticPersons):
        def __getitem__(self, i):
            if i == 3:
                raise ValueError("image 3: corrupt")
            return super().__getitem__(i)

    with pytest.raises(ValueError, match="image 3"):
        ResizedImageCache.open_or_build(Broken(6, size=96), 64, "nearest", tmp_path, progress=False,
                                        log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_build_killed_midway_is_rebuilt_on_next_use(tmp_path):
    """SIGKILL during the build (no cleanup runs): the next open finds no complete cache and builds it."""
    script = textwrap.dedent(f"""
        import time
        from ssd_mnv1.data.cache import ResizedImageCache
        from ssd_mnv1.training import SyntheticPersons

        class Slow(SyntheticPersons):
            def __getitem__(self, i):
                if i == 2:
                    print("started", flush=True)
                    time.sleep(60)
                return super().__getitem__(i)

            def fingerprint(self):
                return SyntheticPersons(self.num_images, self.seed, self.size).fingerprint()

        ResizedImageCache.open_or_build(Slow(6, seed=5, size=96), 64, "nearest", {str(tmp_path)!r}, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(0.2)
        assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the half-written file
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    dataset = SyntheticPersons(6, seed=5, size=96)
    messages: list[str] = []
    cache = ResizedImageCache.open_or_build(dataset, 64, "nearest", tmp_path, progress=False, log=messages.append)
    assert "building" in messages[0]
    for i in range(len(dataset)):
        np.testing.assert_array_equal(cache[i], resize_uint8(dataset[i][0], 64, "nearest"))


def test_cache_of_another_dataset_is_refused():
    dataset = SyntheticPersons(3, size=96)
    other = ResizedImageCache("unused.npy", 64, 5)
    with pytest.raises(ValueError, match="holds 5 images at 64px, expected 3 at 64px"):
        DetectionSamples(dataset, 64, "nearest", NO_AUGMENTATION, other)
