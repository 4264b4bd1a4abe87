"""Shared command-line plumbing: one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

#: Errors that describe bad input; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Call ``main(argv)`` and exit with its status; user errors print ``error: ...`` and exit 2."""
    try:
        status = main(argv)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
