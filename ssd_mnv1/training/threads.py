"""Keep CPU training fast when other processes compete for the same CPUs.

PyTorch's OpenMP threads meet at a barrier after every op; when another process takes one of the
cores, a thread is descheduled and the others spin waiting for it. On this project's 2-CPU
machines, with two other busy processes, a quickstart step took 1.15 s with 2 threads and 0.51 s
with 1 (median of 20 steps, measured side by side), while on a quiet machine 2 threads are faster.
No count is right for both, and the load changes during a run, so :class:`AdaptiveThreads` times
the candidates every so often and keeps the fastest. The thread count changes only the speed
(and float rounding), never the steps trained.
"""

from __future__ import annotations

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
    """Every ``every`` training steps, time ``probe_steps`` steps at each candidate thread count
    (from the count torch has at the start of training down to 1) and keep the fastest.

    Only on the CPU accelerator and only when torch has more than one thread to begin with.
    A change is logged with the step times that decided it.
    """

    def __init__(self, probe_steps: int = 8, every: int = 200, warmup: int = 3, margin: float = 0.1):
        super().__init__()
        if probe_steps < 2 or every <= 0 or warmup < 0:
            raise ValueError("AdaptiveThreads needs probe_steps >= 2, every > 0 and warmup >= 0")
        self.probe_steps, self.every, self.warmup, self.margin = probe_steps, every, warmup, margin
        self.candidates: list[int] = []
        self.current = 0
        self.history: list[tuple[int, dict[int, float], int]] = []  # (step, median s per count, chosen)
        self._queue: list[int] = []
        self._times: dict[int, list[float]] = {}
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
            self._queue = [n for n in self.candidates if n != self.current] + [self.current]
            self._queue = [n for n in self._queue for _ in range(self.probe_steps)]
            self._times = {n: [] for n in self.candidates}
        if self._queue:
            torch.set_num_threads(self._queue[0])
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._queue:
            return
        n = self._queue.pop(0)
        self._times[n].append(time.perf_counter() - self._t0)
        if self._queue:
            return
        medians = {k: statistics.median(v[1:] or v) for k, v in self._times.items() if v}  # first: re-warm
        best = min(medians, key=medians.get)
        if medians[best] < (1 - self.margin) * medians[self.current] and best != self.current:
            times = ", ".join(f"{k} thread{'s' if k > 1 else ''} {v:.3f} s" for k, v in medians.items())
            why = ": other processes are using the CPUs" if best < self.current else ""
            rank_zero_info(f"torch threads {self.current} -> {best} at step {trainer.global_step} "
                           f"(median step {times}{why})")
            self.current = best
        torch.set_num_threads(self.current)
        self.history.append((trainer.global_step, medians, self.current))
        self._next_probe = trainer.global_step + self.every
