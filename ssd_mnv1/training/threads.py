"""Keep CPU training fast when other processes compete for the same CPUs.

PyTorch's OpenMP threads meet at a barrier after every op; when another process takes one of the
cores, a thread is descheduled and the others spin waiting for it. On this project's 2-CPU
machines, with two other busy processes, a quickstart step took 1.15 s with 2 threads and 0.51 s
with 1 (median of 20 steps, measured side by side), while on a quiet machine 2 threads are faster.
No count is right for both, and the load changes during a run, so :class:`AdaptiveThreads` times
the candidates every so often, and as soon as steps slow down, and keeps the fastest. The thread count changes only the speed
and float rounding, never the steps trained; but float rounding is enough to change a seeded run's
result, so the fit CLI adds it only on request (``--adaptive_threads true``): by default the count is
fixed before the first step.
"""

from __future__ import annotations

import math
import statistics
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info


def thread_candidates(max_threads: int) -> list[int]:
    """The thread counts worth timing: the maximum, halvings of it, and 1."""
    counts, n = [], max(1, int(max_threads))
    while n > 1:
        counts.append(n)
        n //= 2
    return counts + [1]


class AdaptiveThreads(pl.Callback):
    """Time each candidate thread count (from torch's count at the start of training down to 1) for
    a few steps and keep the fastest; probe again every ``every`` steps, and at once when steps get
    ``slowdown`` times slower than the winner's probe time (another process started).

    A candidate whose step takes ``abort`` times the best time so far is dropped after that step,
    so a probe under contention costs a step or two. Only on the CPU accelerator, and only when
    torch has more than one thread to begin with. A change is logged with the times that decided it.
    """

    def __init__(self, probe_steps: int = 4, every: int = 200, warmup: int = 3, margin: float = 0.1,
                 slowdown: float = 1.5, window: int = 5, abort: float = 3.0):
        super().__init__()
        if probe_steps < 2 or every <= 0 or warmup < 0 or window < 1:
            raise ValueError("AdaptiveThreads needs probe_steps >= 2, every > 0, warmup >= 0 and window >= 1")
        self.probe_steps, self.every, self.warmup, self.margin = probe_steps, every, warmup, margin
        self.slowdown, self.window, self.abort = slowdown, window, abort
        self.candidates: list[int] = []
        self.current = 0
        self.history: list[tuple[int, dict[int, float], int]] = []  # (step, median s per count, chosen)
        self._queue: list[int] = []
        self._times: dict[int, list[float]] = {}
        self._recent: list[float] = []
        self._reference = math.inf
        self._t0 = 0.0
        self._next_probe = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        cpu = trainer.accelerator.__class__.__name__.startswith("CPU")
        self.current = torch.get_num_threads()
        self.candidates = thread_candidates(self.current) if cpu and self.current > 1 else []
        self._next_probe = trainer.global_step + self.warmup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.candidates:
            return
        if not self._queue and trainer.global_step >= self._next_probe:
            # the current count last, so that the steps after the probe run warm at the winner's
            order = [n for n in self.candidates if n != self.current] + [self.current]
            self._queue = [n for n in order for _ in range(self.probe_steps)]
            self._times = {n: [] for n in self.candidates}
        if self._queue:
            torch.set_num_threads(self._queue[0])
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.candidates:
            return
        elapsed = time.perf_counter() - self._t0
        if not self._queue:  # between probes: watch for a slowdown
            self._recent = (self._recent + [elapsed])[-self.window:]
            if len(self._recent) == self.window and statistics.median(self._recent) > self.slowdown * self._reference:
                self._next_probe = trainer.global_step
            return
        n = self._queue.pop(0)
        self._times[n].append(elapsed)
        done = [statistics.median(v[1:]) for v in self._times.values() if len(v) > 1]  # first: re-warm
        if len(self._times[n]) > 1 and done and elapsed > self.abort * min(done):
            while self._queue and self._queue[0] == n:  # contended: no need to time it further
                self._queue.pop(0)
        if not self._queue:
            self._decide(trainer.global_step)

    def _decide(self, step: int) -> None:
        medians = {k: statistics.median(v[1:] or v) for k, v in self._times.items() if v}
        best = min(medians, key=medians.get)
        if best != self.current and medians[best] < (1 - self.margin) * medians.get(self.current, math.inf):
            times = ", ".join(f"{k} thread{'s' if k > 1 else ''} {v:.3f} s" for k, v in medians.items())
            why = ": other processes are using the CPUs" if best < self.current else ""
            rank_zero_info(f"torch threads {self.current} -> {best} at step {step} (median step {times}{why})")
            self.current = best
        torch.set_num_threads(self.current)
        self.history.append((step, medians, self.current))
        self._reference = medians.get(self.current, math.inf)
        self._recent = []
        self._next_probe = step + self.every
