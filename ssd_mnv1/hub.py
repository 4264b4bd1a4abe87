"""Pretrained files by name: ST's released detectors and the ImageNet backbone, downloaded once.

``resolve_model_file("st_ssd_mobilenet_v1_025_224")`` (and so ``load_model``, ``build_model(weights=...)``,
``open_runner``, ``--model.weights`` and every command's MODEL argument) turns a name of
:data:`ssd_mnv1.zoo.MODEL_ZOO` into a local file: the cached copy when it is there and its sha256 is
right, otherwise a download from ST's repository at the pinned commit (:data:`ssd_mnv1.zoo.ZOO_COMMIT`)
with a progress bar, checked against the registry's sha256 before it is renamed into the cache. An
existing path is returned as it is.

* Cache: ``$SSD_MNV1_HOME``, else ``$XDG_CACHE_HOME/ssd_mnv1/zoo``, else ``~/.cache/ssd_mnv1/zoo``,
  laid out as ST's reference folder (``st_ssd_mobilenet_v1_025_224/st_ssd_mobilenet_v1_025_224.h5``,
  ``mobilenet_v1_0.25_224_imagenet.h5``), so that it also serves as ``reproduce --reference-dir``.
* Mirror: ``$SSD_MNV1_ZOO_URL`` (a URL, or a local folder) laid out the same way replaces ST's
  repository (tests, machines without internet access).
* Licence: ST's detectors are under SLA0044 (use only on or with STMicroelectronics devices); the
  first download of a process names it on stderr.

A failed download (no network, an unreachable mirror) or a file whose sha256 differs raises one
:class:`ZooDownloadError` naming the URL and the exact path to put the file by hand; nothing is
left in the cache.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .download import ChecksumError, DownloadError, download_file, file_digest, part_path
from .fileio import user_cache_dir
from .zoo import MODEL_ZOO, STFiles, ZooFile, st_files, st_release, zoo_file

#: The environment variable that moves the download cache.
HOME_ENV = "SSD_MNV1_HOME"
#: The environment variable that replaces ST's repository by a mirror laid out as the cache.
URL_ENV = "SSD_MNV1_ZOO_URL"
#: Seconds without an answer before a download is given up.
TIMEOUT_S = 60.0

_announced: set[str] = set()


class ZooDownloadError(ValueError):
    """A registry file could not be downloaded, or its bytes are not the released ones."""


def zoo_dir() -> Path:
    """``$SSD_MNV1_HOME``, else ``$XDG_CACHE_HOME/ssd_mnv1/zoo``, else ``~/.cache/ssd_mnv1/zoo``."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    return user_cache_dir("zoo")


def cached_path(name: str) -> Path:
    """Where the file ``name`` lies in the cache (whether or not it is there yet)."""
    return zoo_dir() / zoo_file(name).local_path


def mirror_url() -> str | None:
    """``$SSD_MNV1_ZOO_URL`` as a URL (a plain folder becomes a ``file://`` URL), or None."""
    base = os.environ.get(URL_ENV, "").strip()
    if not base:
        return None
    if "://" not in base:
        base = Path(base).expanduser().resolve().as_uri()
    return base.rstrip("/")


def file_url(entry: ZooFile, base_url: str | None = None) -> str:
    """The download address of ``entry``: under ``base_url`` (or ``$SSD_MNV1_ZOO_URL``) at its
    ``local_path``, else ST's repository at the pinned commit."""
    base = base_url.rstrip("/") if base_url else mirror_url()
    return f"{base}/{entry.local_path}" if base else entry.url


def sha256_of(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def _announce(entry: ZooFile) -> None:
    licence = entry.licence
    if licence.name in _announced:
        return
    _announced.add(licence.name)
    print(f"{entry.name}: licensed under {licence.name} ({licence.url}): {licence.terms}", file=sys.stderr, flush=True)


def _by_hand(entry: ZooFile, url: str, dest: Path, stale: str | None) -> str:
    source = (f"{url} by other means (or set {URL_ENV} to a mirror laid out as the cache)" if url == entry.url
              else f"ST's file {entry.url} by other means (the mirror {url} comes from {URL_ENV} or base_url)")
    there = f" (the file there now has sha256 {stale}, not the released one)" if stale else ""
    return f"download {source} and put it at {dest}{there}; its sha256 must be {entry.sha256}"


def fetch(name: str, *, base_url: str | None = None, show_progress: bool = True) -> Path:
    """The local file of the registry name ``name``, downloaded into the cache if it is not there.

    A cached file is used when its sha256 is the registry's (one read of a few MB); otherwise it is
    downloaded from ``base_url`` (a mirror laid out as the cache), ``$SSD_MNV1_ZOO_URL``, or ST's
    repository at the pinned commit, and renamed into the cache only once its sha256 is checked.
    """
    entry = zoo_file(name)
    dest = zoo_dir() / entry.local_path
    stale = None
    if dest.is_file():
        stale = sha256_of(dest)
        if stale == entry.sha256:
            return dest
    url = file_url(entry, base_url)
    _announce(entry)
    new_folders = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    try:
        if stale is not None:
            dest.unlink()  # not the released file: download_file would take it as done
        download_file(url, dest, sha256=entry.sha256, progress=show_progress, timeout=TIMEOUT_S,
                      say=lambda _: None)
    except ChecksumError as exc:
        _remove(part_path(dest), new_folders)
        raise ZooDownloadError(f"{entry.name}: {url} has sha256 {exc.actual}, expected {entry.sha256}: not the "
                               f"released file, nothing was written to the cache; "
                               f"{_by_hand(entry, url, dest, stale)}") from None
    except DownloadError as exc:  # unreachable, an HTTP error
        message = f"cannot download {url} ({exc.reason})"
        _remove(part_path(dest), new_folders)
        raise ZooDownloadError(f"{entry.name}: {message}; {_by_hand(entry, url, dest, stale)}") from None
    except BaseException:
        _remove(part_path(dest), new_folders)
        raise
    if stale is not None:
        print(f"{entry.name}: replaced {dest}, whose sha256 was {stale}", file=sys.stderr, flush=True)
    return dest


def _remove(part: Path, new_folders: list[Path]) -> None:
    """Leave the cache as it was before a failed fetch: no partial file, no empty folders."""
    part.unlink(missing_ok=True)
    for folder in new_folders:
        try:
            folder.rmdir()
        except OSError:
            break


def fetch_release(size: int, *, base_url: str | None = None) -> STFiles:
    """ST's .h5 and int8 .tflite for input ``size``, fetched into the cache; their paths there."""
    release = st_release(size)
    for file in (release.h5, release.int8_tflite):
        fetch(Path(file).stem, base_url=base_url)
    return st_files(zoo_dir(), size, must_exist=True)


def resolve_model_file(name_or_path: str | os.PathLike) -> Path:
    """A model file argument as a local path: an existing path as it is, a :data:`MODEL_ZOO` name
    fetched (:func:`fetch`); anything else is a FileNotFoundError (listing the names when the
    argument looks like one rather than a file)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    text = os.fspath(name_or_path)
    if text in MODEL_ZOO:
        return fetch(text)
    if not path.suffix and len(path.parts) == 1:
        raise FileNotFoundError(f"{path}: no such model file, nor a model zoo name ({', '.join(MODEL_ZOO)})")
    raise FileNotFoundError(f"{path}: no such model file")
