"""The project's one downloader: a ``.part`` file resumed with HTTP Range, verified, renamed.

:func:`download_file` fetches a URL (``https://``, ``file://``) through ``DEST.part`` (resumed on a
rerun or a dropped connection, restarted when the server cannot resume), checks the md5 or sha256
(or the size when no checksum is known) and only then renames it to ``DEST``; a mismatch deletes
the part. :func:`load_checksums` reads a ``{filename: md5}`` table. ``ssd_mnv1.data.prepare``
downloads COCO 2017 with them; ``ssd_mnv1.hub`` the model zoo's files.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from .fileio import write_failure
from .progress import progress as progress_bar

_CHUNK = 1 << 20


def _say(msg: str) -> None:
    print(msg, flush=True)


def load_checksums(path: str | os.PathLike) -> dict[str, dict]:
    """``{filename: md5}`` or ``{filename: {"md5": ..., "size": ...}}`` -> ``{filename: {...}}``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checksums file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object {{filename: md5}}")
    out = {}
    for name, value in raw.items():
        entry = {"md5": value} if isinstance(value, str) else value
        if not isinstance(entry, dict) or not set(entry) <= {"md5", "size"}:
            raise ValueError(f"{path}: entry {name!r} must be an md5 string or {{\"md5\": ..., \"size\": ...}}")
        md5 = entry.get("md5")
        if md5 is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", str(md5)):
            raise ValueError(f"{path}: entry {name!r}: {md5!r} is not an md5 hex digest")
        out[name] = {k: (v.lower() if k == "md5" and v else v) for k, v in entry.items()}
    return out


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", progress: bool = False) -> str:
    """Hex digest of a file (``md5``, ``sha256``, any :mod:`hashlib` name), read in 1 MiB blocks."""
    path = Path(path)
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f, progress_bar(total=path.stat().st_size, unit="B", unit_scale=True,
                                             desc=f"{algorithm} {path.name}", disable=not progress) as bar:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


class DownloadError(ValueError):
    """``url`` could not be read (``reason``: the HTTP status or the network/file error)."""

    def __init__(self, message: str, url: str, reason: str):
        super().__init__(message)
        self.url, self.reason = url, reason


class ChecksumError(ValueError):
    """The downloaded bytes are not the expected ones (``algorithm``, ``expected``, ``actual`` hex digests)."""

    def __init__(self, message: str, algorithm: str, expected: str, actual: str):
        super().__init__(message)
        self.algorithm, self.expected, self.actual = algorithm, expected, actual


class _Restart(Exception):
    """The server answered in a way that makes the partial file unusable: start from zero."""


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    m = re.fullmatch(r"\s*bytes\s+(\d+|\*)(?:-\d+)?/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = None if m[1] == "*" else int(m[1])
    total = None if m[2] == "*" else int(m[2])
    return start, total


def _fetch(url: str, part: Path, *, timeout: float, progress: bool, say: Callable[[str], None]) -> int | None:
    """Append the rest of ``url`` to ``part`` (HTTP Range); return the total size if announced."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "ssd_mnv1"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch, or the part is longer than the file
            _, total = _content_range(exc.headers.get("Content-Range"))
            if total == have:
                return total
            raise _Restart(f"server refused to resume at byte {have}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}", url, f"HTTP {exc.code} {exc.reason}") from None
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if have and response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != have:
                raise _Restart(f"server resumed at byte {start}, expected {have}")
            mode = "ab"
        else:
            if have:
                say(f"{url}: server ignored the resume request; downloading from the start")
            have, mode, total = 0, "wb", length
        with open(part, mode) as f, progress_bar(total=total, initial=have, unit="B", unit_scale=True,
                                                 desc=f"downloading {part.name[:-5]}", disable=not progress) as bar:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    if total is not None and got < total:
        raise ConnectionError(f"connection closed at byte {got} of {total}")
    return total


def _verify(path: Path, name: str, checksum: tuple[str, str] | None, size: int | None, progress: bool,
            say: Callable[[str], None]) -> None:
    """Raise ValueError on a size or checksum mismatch; say when only the size could be checked."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ValueError(f"{name}: size mismatch: expected {size} bytes, got {actual}")
    if checksum:
        algorithm, expected = checksum[0], checksum[1].lower()
        got = file_digest(path, algorithm, progress)
        if got != expected:
            raise ChecksumError(f"{name}: {algorithm} mismatch: expected {expected}, got {got}", algorithm, expected, got)
        say(f"{name}: {algorithm} ok ({got})")
    elif size is not None:
        say(f"{name}: no known md5; verified the size only ({actual} bytes)")
    else:
        say(f"{name}: no known md5 or size; NOT verified")


def part_path(dest: str | os.PathLike) -> Path:
    """The partial file :func:`download_file` writes before ``dest`` is verified."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def download_file(url: str, dest: str | os.PathLike, *, md5: str | None = None, sha256: str | None = None,
                  size: int | None = None, progress: bool = True, timeout: float = 60.0, retries: int = 3,
                  say: Callable[[str], None] = _say) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed with HTTP Range on a rerun or a
    dropped connection); verify sha256 or md5 (or size only when neither is known), then rename
    into place. ``say`` prints its one-line notes (stdout by default).

    An existing ``dest`` was renamed there only after verification, so it is checked by size only.
    On a checksum mismatch the ``.part`` file is deleted (the next run starts over).
    """
    dest = Path(dest)
    part = part_path(dest)
    checksum = ("sha256", sha256) if sha256 else ("md5", md5) if md5 else None
    if dest.is_file():
        if size is not None and dest.stat().st_size != size:
            raise ValueError(f"{dest}: existing file has {dest.stat().st_size} bytes, expected {size}; "
                             "delete it to download again")
        say(f"{dest.name}: already downloaded ({dest})")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if part.exists():
        say(f"{dest.name}: resuming at byte {part.stat().st_size}")
    total, restarts = None, 0
    attempt = 0
    while True:
        try:
            total = _fetch(url, part, timeout=timeout, progress=progress, say=say)
            break
        except _Restart as exc:
            restarts += 1
            if restarts > 1:
                raise ValueError(f"{url}: cannot resume ({exc})") from None
            say(f"{dest.name}: {exc}; downloading from the start")
            part.unlink(missing_ok=True)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
                TimeoutError) as exc:
            attempt += 1
            reason = getattr(exc, "reason", exc)
            if attempt >= retries:
                raise DownloadError(f"{url}: download failed after {retries} attempt(s) ({reason}); rerun to "
                                    f"resume from {part}", url, str(reason)) from None
            say(f"{dest.name}: {reason}; retrying ({attempt}/{retries - 1})")
        except OSError as exc:  # a full disk, no permission: the part so far is kept for a rerun
            error = write_failure(exc, dest, part, left=f"rerun to resume from {part}")
            if error is None:
                raise
            raise error from None
    if size is not None and total is not None and size != total:
        say(f"{dest.name}: the server announces {total} bytes, the checksum table {size}")
    try:
        _verify(part, dest.name, checksum, size if size is not None else total, progress, say)
    except ChecksumError as exc:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{exc} (downloaded from {url}; the partial file was deleted)", exc.algorithm,
                            exc.expected, exc.actual) from None
    except ValueError as exc:
        part.unlink(missing_ok=True)
        raise ValueError(f"{exc} (downloaded from {url}; the partial file was deleted)") from None
    os.replace(part, dest)
    return dest
