"""Shared command-line plumbing: one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import re
import sys
import warnings
from typing import Callable, NoReturn

#: Errors that describe bad input; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def user_message(exc: BaseException) -> str:
    """The message of ``exc``; for an error re-raised from a DataLoader worker, the original one.

    PyTorch re-raises a worker's exception as ``type(exc)("Caught ... in DataLoader worker process
    N.\\nOriginal Traceback ...\\n<module>.<Type>: <message>")``; only the last part is for users.
    """
    text = str(exc)
    if "in DataLoader worker process" not in text or "Original Traceback" not in text:
        return text
    name = re.escape(type(exc).__name__)
    found = list(re.finditer(rf"^(?:[\w.]+\.)?{name}: (.*)", text, flags=re.M | re.S))
    return found[-1].group(1).strip() if found else text


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warning: <message>`` for plain UserWarnings (ours); other categories keep their type and location."""
    stream = sys.stderr if file is None else file
    text = (f"warning: {message}" if category is UserWarning
            else f"warning: {category.__name__}: {message} ({filename}:{lineno})")
    try:
        print(text, file=stream, flush=True)
    except OSError:  # stderr closed: nothing sensible to do with a warning
        pass


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Call ``main(argv)`` and exit with its status; user errors print ``error: ...`` and exit 2.

    Warnings are printed as one ``warning: ...`` line each (no source line), so a count of what
    a reader skipped reads as a message, not as a code excerpt.
    """
    warnings.showwarning = _show_warning
    try:
        status = main(argv)
    except USER_ERRORS as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
