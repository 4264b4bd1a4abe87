"""Progress bars that stay readable in a log.

On a terminal :func:`progress` is plain ``tqdm``. When its stream is not a terminal (a CI log,
``| tail``, ``nohup``, a file), tqdm would write one carriage-return redraw per refresh; there it
returns a :class:`LogProgress` instead, which writes whole lines: one at every tenth of the total
(or, with no total, every ``interval`` seconds), one when ``interval`` seconds passed without a
line, and one at the end. The lines keep tqdm's wording::

    evaluate float @192:  50% 44/87 [00:21<00:20, 2.07batch/s]
    evaluate float @192: 100% 87/87 [00:41<00:00, 2.11batch/s]

Both answer the tqdm calls the project uses: iteration, ``with``, ``update(n)``, ``close()``,
``set_postfix``, ``set_description``, ``write``. :func:`progress_line` and :func:`format_interval`
are the one formatter of such lines, also used by the training CLI's log progress bar
(:class:`ssd_mnv1.training.LogProgressBar`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

#: Seconds without a line after which a :class:`LogProgress` writes one anyway.
DEFAULT_INTERVAL = 60.0
#: Lines per known total (every tenth).
DEFAULT_STEPS = 10


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, captured streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def format_interval(seconds: float) -> str:
    """``[H:]MM:SS``, as tqdm writes elapsed and remaining times."""
    from tqdm import tqdm

    return tqdm.format_interval(seconds)


def progress_line(n: float, total: float | None, elapsed: float, *, desc: str = "", unit: str = "it",
                  unit_scale: bool = False, postfix: str | None = None, initial: float = 0) -> str:
    """One progress line in tqdm's words, without its bar (the rate always as ``<unit>/s``)::

        evaluate float @192:  50% 44/87 [00:21<00:20, 2.07batch/s]

    ``total`` None (or infinite): ``desc: 44batch [00:21, 2.07batch/s]``. The rate counts from
    ``initial`` (a resumed download)."""
    from tqdm import tqdm

    if total is not None and not math.isfinite(total):
        total = None
    rate = (n - initial) / elapsed if elapsed > 0 else None
    fmt = "{desc}{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"
    if total is None:
        fmt = "{desc}{n_fmt}{unit} [{elapsed}, {rate_noinv_fmt}{postfix}]"
    return tqdm.format_meter(n, total, elapsed, prefix=f"{desc}: " if desc else "", unit=unit,
                             unit_scale=unit_scale, rate=rate, postfix=postfix or None, bar_format=fmt)


def progress(iterable: Iterable | None = None, desc: str | None = None, total: float | None = None, *,
             disable: bool = False, unit: str = "it", unit_scale: bool = False, file: TextIO | None = None,
             interval: float = DEFAULT_INTERVAL, **tqdm_kwargs):
    """A progress bar over ``iterable`` (or a manual one with ``total`` and ``update``): ``tqdm`` when
    ``file`` (default ``sys.stderr``, as tqdm) is a terminal, otherwise a line-writing
    :class:`LogProgress`. ``disable`` gives tqdm's silent bar. Further keyword arguments go to tqdm
    on a terminal and are ignored otherwise."""
    stream = sys.stderr if file is None else file
    if disable or is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, disable=disable, unit=unit, unit_scale=unit_scale,
                    file=stream, **tqdm_kwargs)
    return LogProgress(iterable, desc=desc, total=total, unit=unit, unit_scale=unit_scale, file=stream,
                       interval=interval, initial=tqdm_kwargs.get("initial", 0))


class LogProgress:
    """tqdm's interface, written as whole lines (no carriage returns); see the module docstring.

    The last line is written when the iteration runs to its end, at ``close()``, or on leaving a
    ``with`` block without an exception. A loop left by an exception (or a ``break``) writes none:
    the error is the news then.
    """

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None, total: float | None = None, *,
                 unit: str = "it", unit_scale: bool = False, file: TextIO | None = None,
                 interval: float = DEFAULT_INTERVAL, steps: int = DEFAULT_STEPS, initial: float = 0):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable = iterable
        self.desc = desc or ""
        self.total = total
        self.unit, self.unit_scale = unit, unit_scale
        self.file = file
        self.interval, self.steps = interval, max(1, int(steps))
        self.n = self.initial = initial
        self.postfix = ""
        self.closed = False
        self.start_t = self._last_t = time.monotonic()
        self._next_mark = self._mark_after(initial)

    # ------------------------------------------------------------------------------ tqdm's API
    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LogProgress without an iterable: use update()")
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return int(self.total) if self.total is not None else len(self.iterable)  # type: ignore[arg-type]

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.closed = True

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n >= self._next_mark or now - self._last_t >= self.interval:
            if self.total is not None and self.n >= self.total:
                return  # the end: close() writes it
            self._write(now)
            self._next_mark = self._mark_after(self.n)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(time.monotonic())

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(dict(ordered_dict) if ordered_dict else {}), **kwargs}
        self.postfix = ", ".join(f"{k}={_short(v)}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self, *args, **kwargs) -> None:
        pass

    def write(self, s: str, file: TextIO | None = None, end: str = "\n") -> None:
        stream = file or self.file or sys.stderr
        stream.write(s + end)
        stream.flush()

    # -------------------------------------------------------------------------------- internals
    def _mark_after(self, n: float) -> float:
        """The next tenth of the total past ``n`` (infinite without a total: time decides)."""
        if not self.total:
            return float("inf")
        step = self.total / self.steps
        return (int(n / step) + 1) * step

    def line(self, now: float | None = None) -> str:
        """The current state as :func:`progress_line` words it."""
        elapsed = (time.monotonic() if now is None else now) - self.start_t
        return progress_line(self.n, self.total, elapsed, desc=self.desc, unit=self.unit,
                             unit_scale=self.unit_scale, postfix=self.postfix, initial=self.initial)

    def _write(self, now: float) -> None:
        self._last_t = now
        self.write(self.line(now))


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
