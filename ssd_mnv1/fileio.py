"""Output paths: checked up front, written atomically.

:func:`output_file` and :func:`output_folder` check an output path before any work is done (its
folder exists or can be made, is writable, and the path is not a folder where a file is wanted or
a file where a folder is wanted), raising one error that names the option and the path. Every
command checks its outputs with them.

:func:`atomic_path` writes to a temporary name in the target folder, then renames it, so an
interrupted run never leaves a truncated file under the final name; a write that fails (a full
disk, no permission, a read-only file system) raises one :class:`OutputError` naming the path,
and leaves nothing behind. :func:`atomic_folder` does the same for a whole folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, NoReturn

#: errno values of a write that failed for a reason outside the program: said in one line, no traceback.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                          errno.EIO, errno.ENOTDIR, errno.EEXIST, errno.EISDIR})


class OutputError(OSError):
    """An output could not be written (full disk, no permission, read-only file system...); the
    message names the path. Nothing was left under the path or beside it."""


def user_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/ssd_mnv1/<name>``, else ``~/.cache/ssd_mnv1/<name>``: where the project keeps
    what it can rebuild or download again (each cache also has its own environment override)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ssd_mnv1" / name


def _named(path: Path, what: str | None) -> str:
    return f"{what} {path}" if what else str(path)


def _writable_folder(folder: Path, path: Path, what: str | None) -> None:
    """``folder`` (the place ``path`` goes) is a writable folder, or can be made in one."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{_named(path, what)}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == path else existing
        reason = "read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY else "permission denied"
        raise PermissionError(f"{_named(path, what)}: cannot write into {where} ({reason})")


def output_file(path: str | os.PathLike, what: str | None = None) -> Path:
    """``path`` if a file can be written there (an existing file is replaced); otherwise one error
    naming ``what`` (the option, e.g. ``"--json"``) and the path: a folder, a parent that is a file,
    a folder without write permission."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{_named(path, what)}: is a folder, not a file")
    _writable_folder(path.parent, path, what)
    return path


def output_folder(path: str | os.PathLike, what: str | None = None) -> Path:
    """``path`` if files can be written into it (it exists as a folder or can be made); otherwise
    one error naming ``what`` and the path: a file, a parent that is a file, no write permission."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{_named(path, what)}: exists and is not a folder")
    _writable_folder(path, path, what)
    return path


def write_failure(exc: OSError, path: str | os.PathLike, *own: str | os.PathLike | None,
                  left: str = "nothing was written") -> OutputError | None:
    """The :class:`OutputError` naming ``path`` if ``exc`` is a failed write of ``path`` (or of
    ``own``: its temporary files), else ``None`` (say, a missing input read while writing).
    ``left`` says what stays behind."""
    if isinstance(exc, OutputError) or exc.errno not in WRITE_ERRNOS:
        return None
    path = Path(path)
    mine = {path, *(Path(p) for p in own if p is not None)}
    named = [Path(f) for f in (exc.filename, exc.filename2) if f is not None]  # a copy names both ends
    if named and not any(f in mine or f in path.parents or any(m in f.parents for m in mine) for f in named):
        return None
    error = OutputError(f"{path}: cannot write ({exc.strerror or exc}); {left}")
    error.errno = exc.errno
    return error


def _reraise(exc: OSError, path: Path, tmp: Path | None) -> NoReturn:
    """In an ``except`` block: raise :func:`write_failure`'s error for ``exc``, or the exception being handled."""
    error = write_failure(exc, path, tmp)
    if error is None:
        raise  # noqa: PLE0704 - the exception being handled
    raise error from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    An :class:`OSError` of a failed write (full disk, permission, read-only file system), in the
    block or in making the folder, becomes one :class:`OutputError` naming ``path``."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except OSError as exc:
        _reraise(exc, path, tmp)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path``, renamed to ``path`` on success (replacing what was
    there), deleted on failure: an interrupted run never leaves a half-written folder under
    ``path``. Write errors become one :class:`OutputError` naming ``path``, as in :func:`atomic_path`."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the folder the usual mode
        if path.is_dir() and any(path.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "d")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if path.is_dir():
                path.rmdir()
            os.replace(tmp, path)
    except OSError as exc:
        # a file of the folder that atomic_path could not write: the folder is what failed
        _reraise(exc.__cause__ if isinstance(exc, OutputError) and isinstance(exc.__cause__, OSError) else exc,
                 path, tmp)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)  # through a Python file, so that a failed write is an OSError (not a RuntimeError)


def existing_file(path: str | os.PathLike, what: str, empty_error: type[ValueError] = ValueError) -> Path:
    """``path`` if it is a non-empty file; otherwise one error naming it and saying ``what`` was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    if path.stat().st_size == 0:
        raise empty_error(f"{path}: empty file (0 bytes), not a {what}")
    return path
