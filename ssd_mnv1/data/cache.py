"""Decode once: a dataset's images decoded and resized to SxS uint8, in one memory-mapped file.

ST resizes every image to the input size *before* it augments (docs/st_model.md §8.4), so the
decoded, resized pixels are a pure function of (the image files, S, interpolation) and can be
computed once and reused by every epoch and every later run. Training then only augments small
uint8 images: JPEG decoding was 43 % of a training step at 224 (issue #13).

Layout: ``<cache_dir>/<key>.npy`` (``(N, S, S, 3)`` uint8, read with ``np.load(mmap_mode="r")``)
plus ``<key>.json`` (what the key was made of, for people). The key hashes the format version, S,
the interpolation and the dataset's :func:`fingerprint` (every file's path, size and modification
time; for generated data, its generator's source and parameters). The file is written under a
temporary name and renamed when complete, so a kill during the build leaves no file under the
final name; a final file whose header or length is wrong (copied half, disk full) is rebuilt.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..fileio import atomic_path, atomic_write_text, user_cache_dir
from ..preprocess import resize_uint8

#: Bump when the pixels a cache holds for the same inputs change (decoder, resize, rounding).
CACHE_FORMAT = 2  # 2: bilinear in numpy, the same pixels at any torch thread count
#: The environment variable that moves the default cache folder.
CACHE_ENV = "SSD_MNV1_CACHE"


def default_cache_dir() -> Path:
    """``$SSD_MNV1_CACHE``, else ``$XDG_CACHE_HOME/ssd_mnv1/images``, else ``~/.cache/ssd_mnv1/images``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return user_cache_dir("images")


def fingerprint(dataset) -> list:
    """What a dataset's pixels depend on, JSON-serialisable, or raise TypeError if unknown.

    A dataset may define ``fingerprint()`` itself (generated data, subsets); a file-backed one is
    fingerprinted by each record's resolved path, byte size and modification time."""
    if hasattr(dataset, "fingerprint"):
        return dataset.fingerprint()
    records = getattr(dataset, "records", None)
    if records is None:
        raise TypeError(f"cannot fingerprint {type(dataset).__name__}: it has no records and no fingerprint()")
    items = []
    for rec in records:
        path = Path(rec.file).resolve()
        st = path.stat()
        items.append([str(path), st.st_size, st.st_mtime_ns])
    return ["files", items]


def source_fingerprint(obj) -> str:
    """sha256 of the source file that defines ``obj`` (a generator's code is part of its pixels)."""
    return hashlib.sha256(Path(inspect.getsourcefile(obj)).read_bytes()).hexdigest()


def cache_key(dataset, size: int, interpolation: str) -> tuple[str, dict]:
    """The cache file's key and the description it was hashed from."""
    spec = {"format": CACHE_FORMAT, "size": int(size), "interpolation": interpolation,
            "images": len(dataset), "dataset": fingerprint(dataset)}
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32], spec


class ResizedImageCache:
    """``cache[i]``: image ``i`` of the dataset it was built from, resized, ``(S, S, 3)`` uint8.

    Open with :meth:`open_or_build`. The array is memory-mapped lazily in each process, so a cache
    pickles as its path (DataLoader workers share the page cache instead of copying the images).
    """

    def __init__(self, path: str | os.PathLike, size: int, count: int):
        self.path, self.size, self.count = Path(path), int(size), int(count)
        self._array: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return np.array(self._array[i])  # a writable copy (torch.from_numpy warns on read-only memory)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    @classmethod
    def open_or_build(cls, dataset, size: int, interpolation: str, cache_dir: str | os.PathLike | None = None,
                      *, workers: int = 0, progress: bool = True,
                      log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)
                      ) -> "ResizedImageCache":
        """The cache of ``dataset`` at ``size``, built (in parallel with ``workers`` processes, with
        a progress bar) if it is missing or damaged."""
        key, spec = cache_key(dataset, size, interpolation)
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = folder / f"{key}.npy"
        shape = (len(dataset), int(size), int(size), 3)
        problem = _check(path, shape)
        if problem is None:
            return cls(path, size, len(dataset))
        if problem != "missing":
            log(f"image cache {path}: {problem}; rebuilding it")
        _build(dataset, size, interpolation, path, shape, workers=workers, progress=progress, log=log)
        atomic_write_text(folder / f"{key}.json", json.dumps({**spec, "dataset": _summary(spec["dataset"])},
                                                             indent=1) + "\n")
        return cls(path, size, len(dataset))


def _check(path: Path, shape: tuple[int, ...]) -> Optional[str]:
    """None if ``path`` is a complete cache of ``shape``, else what is wrong with it."""
    if not path.is_file():
        return "missing"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            header = read(f)  # (shape, fortran_order, dtype)
            offset = f.tell()
    except (ValueError, OSError, SyntaxError) as exc:
        return f"unreadable header ({exc})"
    if tuple(header[0]) != shape or header[2] != np.uint8 or header[1]:
        return f"holds {header[2]} {tuple(header[0])}, expected uint8 {shape}"
    expected = offset + int(np.prod(shape))
    actual = path.stat().st_size
    if actual != expected:
        return f"{actual} bytes, expected {expected} (an incomplete copy or write)"
    return None


class _Resized:
    """Dataset view: ``(i, resized uint8 image)``; decoding runs in DataLoader workers."""

    def __init__(self, dataset, size: int, interpolation: str):
        self.dataset, self.size, self.interpolation = dataset, size, interpolation

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, _ = self.dataset[i]
        return i, resize_uint8(image, self.size, self.interpolation)


def _build(dataset, size: int, interpolation: str, path: Path, shape: tuple[int, ...], *, workers: int,
           progress: bool, log: Callable[[str], None]) -> None:
    from torch.utils.data import DataLoader

    from ..progress import progress as progress_bar

    log(f"building the image cache {path} ({shape[0]} images at {size}x{size}, {interpolation}; "
        f"{np.prod(shape) / 2**20:.0f} MiB): decoded once, reused by later epochs and runs")
    import torch

    # its own generator: building a cache must not move the global RNG (a seeded run is the same with it)
    loader = DataLoader(_Resized(dataset, size, interpolation), batch_size=None, num_workers=workers,
                        generator=torch.Generator())
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for i, pixels in progress_bar(loader, desc=f"image cache @{size}", total=shape[0],
                                      disable=not progress):
            array[int(i)] = pixels.numpy() if hasattr(pixels, "numpy") else pixels
        array.flush()
        del array
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())


def _summary(dataset_spec) -> object:
    """The fingerprint as written to the ``.json`` (file lists shortened to their count and first file)."""
    if isinstance(dataset_spec, list) and dataset_spec and dataset_spec[0] == "files":
        files = dataset_spec[1]
        return {"files": len(files), "first": files[0][0] if files else None}
    return dataset_spec
