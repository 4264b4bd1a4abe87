"""Where a training step's time goes: data wait, forward, matching, loss, backward, optimizer.

``--trainer.callbacks+=ssd_mnv1.training.StepProfile`` (or ``StepProfile(path=...)`` in code) times
every training step with Lightning's hooks and the module's own phase marks
(:meth:`SSDLightningModule.phase`), and at the end of training prints the median split and, with
``path``, writes every step's times as JSON. It only reads clocks: the arithmetic is unchanged.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from ..fileio import atomic_write_text

#: The split of one step, in order; ``other`` is the step's time that none of them covers
#: (Lightning's loop, logging, callbacks).
PHASES = ("data", "forward", "matching", "loss", "backward", "optimizer", "other")


class StepProfile(pl.Callback):
    """Per-step wall time of each :data:`PHASES` entry, skipping the first ``warmup`` steps.

    ``data`` is the time between the end of one step and the start of the next (waiting for the
    DataLoader, or augmenting in the main process with no loader workers); ``backward`` runs from
    Lightning's ``on_before_backward`` to ``on_after_backward``; ``optimizer`` from
    ``on_before_optimizer_step`` to the end of the batch.
    """

    def __init__(self, warmup: int = 2, path: str | None = None):
        super().__init__()
        self.warmup, self.path = int(warmup), path
        self.steps: list[dict[str, float]] = []
        self.epochs: list[float] = []  # wall seconds of each training epoch (loader start included)
        self._epoch_start = 0.0
        self._marks: dict[str, float] = {}
        self._end = None
        self._current: dict[str, float] = {}

    def mark(self, name: str, seconds: float) -> None:
        """A phase measured inside the module (forward / matching / loss)."""
        self._current[name] = self._current.get(name, 0.0) + seconds

    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.step_profile = self

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._end = None  # the epoch's first wait includes the loader's start: not a step's
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(time.perf_counter() - self._epoch_start)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        self._current = {"data": now - self._end} if self._end is not None else {}
        self._marks = {"start": now}

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._marks["backward"] = time.perf_counter()

    def on_after_backward(self, trainer, pl_module) -> None:
        self._current["backward"] = time.perf_counter() - self._marks.pop("backward", time.perf_counter())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._marks["optimizer"] = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if "optimizer" in self._marks:
            self._current["optimizer"] = now - self._marks["optimizer"]
        total = now - self._marks["start"]
        self._current["other"] = max(0.0, total - sum(v for k, v in self._current.items() if k != "data"))
        if "data" in self._current and trainer.global_step > self.warmup:
            self._current["images"] = float(batch["images"].shape[0])
            self.steps.append(self._current)
        self._end = now

    def summary(self) -> dict[str, float]:
        """Median seconds per phase and per step, and images per second over the profiled steps."""
        if not self.steps:
            return {}
        out = {p: statistics.median(s.get(p, 0.0) for s in self.steps) for p in PHASES}
        step_times = [sum(s.get(p, 0.0) for p in PHASES) for s in self.steps]
        out["step"] = statistics.median(step_times)
        out["images_per_s"] = sum(s["images"] for s in self.steps) / sum(step_times)
        out["steps"] = len(self.steps)
        return out

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        pl_module.step_profile = None
        summary = self.summary()
        if not summary:
            return
        split = ", ".join(f"{p} {summary[p] * 1000:.0f} ms" for p in PHASES)
        rank_zero_info(f"step profile (median of {summary['steps']} steps): {split}; step "
                       f"{summary['step'] * 1000:.0f} ms, {summary['images_per_s']:.1f} images/s")
        if self.path:
            atomic_write_text(Path(self.path), json.dumps({"summary": summary, "epochs": self.epochs,
                                                           "steps": self.steps}, indent=1))
