"""Callbacks of the training CLI."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar, Timer
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only

from ..fileio import atomic_path, atomic_write_text
from ..progress import format_interval, progress_line


def stopped_by_time(trainer: pl.Trainer) -> str | None:
    """A loud warning when ``trainer.max_time`` ended training before its planned steps/epochs:
    the weights are then those of a shorter run than configured, whose result depends on the machine."""
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    if timer is None or timer.time_remaining() is None or timer.time_remaining() > 0:
        return None
    if trainer.max_steps > 0 and trainer.global_step < trainer.max_steps:
        planned = f"{trainer.global_step} of max_steps {trainer.max_steps} steps"
    elif trainer.max_epochs is not None and 0 < trainer.max_epochs and trainer.current_epoch < trainer.max_epochs:
        planned = f"{trainer.current_epoch} of max_epochs {trainer.max_epochs} epochs"
    else:
        return None
    return (f"WARNING: training was STOPPED EARLY by trainer.max_time ({timer._duration:.0f} s) after {planned}: "
            "the result is not that of the configured run (raise or remove max_time)")


class FitReport(pl.Callback):
    """Measure validation ST-AP before training and after it, and print where the weights went.

    The "before" figure is what fine-tuning starts from (or ~0 from scratch); "after" is measured
    on the final weights. Both use the full validation set in the main process. The same figures
    go to ``<default_root_dir>/fit_report.json`` (written atomically), which scripts and CI read.
    """

    def __init__(self, before: bool = True):
        super().__init__()
        self.before = before
        self.st_ap_before: float | None = None
        self.st_ap_after: float | None = None
        self._t0 = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
        if self.before and trainer.is_global_zero and trainer.fit_loop.epoch_loop.global_step == 0:
            self.st_ap_before = pl_module.evaluate_loader(trainer.datamodule.val_dataloader())
            print(f"validation ST-AP before training: {self.st_ap_before:.2f}", flush=True)

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        self.st_ap_after = pl_module.evaluate_loader(trainer.datamodule.val_dataloader())
        minutes = (time.perf_counter() - self._t0) / 60
        lines = ["", f"trained {trainer.global_step} steps ({trainer.current_epoch} epochs) in {minutes:.1f} min"]
        cut = stopped_by_time(trainer)
        if cut:
            lines.append(cut)
        if self.st_ap_before is not None:
            lines.append(f"validation ST-AP ({pl_module.hparams.val_variant}, IoU 0.4): "
                         f"before {self.st_ap_before:.2f} -> after {self.st_ap_after:.2f}")
        else:
            lines.append(f"validation ST-AP ({pl_module.hparams.val_variant}, IoU 0.4): {self.st_ap_after:.2f}")
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.best_model_path:
                continue
            if cb.monitor is None:  # keeps the most recent weights
                lines.append(f"last checkpoint: {cb.best_model_path}")
            else:
                score = "" if cb.best_model_score is None else f" ({cb.monitor} {float(cb.best_model_score):.2f})"
                lines.append(f"best checkpoint: {cb.best_model_path}{score}")
            if cb.last_model_path:
                lines.append(f"last checkpoint: {cb.last_model_path}")
        print("\n".join(lines), flush=True)
        report = {"st_ap_before": self.st_ap_before, "st_ap_after": self.st_ap_after,
                  "metric": f"ST-AP {pl_module.hparams.val_variant}, IoU 0.4", "steps": trainer.global_step,
                  "epochs": trainer.current_epoch, "minutes": round(minutes, 2), "stopped_by_time": bool(cut),
                  "torch_threads": torch.get_num_threads()}
        atomic_write_text(Path(trainer.default_root_dir or ".") / "fit_report.json",
                          json.dumps(report, indent=1) + "\n")


# ------------------------------------------------------------------------------ learning curves
def _batch_size(batch) -> int:
    """Images in ``batch`` (the data module's dict, a tensor, or a tuple/list starting with one)."""
    if isinstance(batch, Mapping):
        batch = batch.get("images", next(iter(batch.values()), None))
    elif isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape else 1


def _step_loss(trainer: pl.Trainer, pl_module, outputs) -> torch.Tensor | None:
    """The training loss of one step as ``training_step`` returned it (Lightning hands callbacks the
    loss divided by ``accumulate_grad_batches`` in automatic optimization: undone here)."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return None
    loss = loss.detach().float().reshape(())
    if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
        loss = loss * trainer.accumulate_grad_batches
    return loss


class _EpochMean:
    """Batch-size weighted mean of the step losses of one epoch, kept on the device (no sync per step)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, loss: torch.Tensor | None, n: int) -> None:
        if loss is None:
            return
        self.total = loss * n if self.total is None else self.total + loss * n
        self.count += n

    def local(self) -> float | None:
        return None if self.total is None else float(self.total) / self.count

    def reduced(self, trainer: pl.Trainer, device) -> float | None:
        """The mean over every rank (a collective: call it on all ranks)."""
        pair = torch.zeros(2, dtype=torch.float64, device=device)
        if self.total is not None:
            pair[0], pair[1] = self.total.to(device, torch.float64), self.count
        pair = trainer.strategy.reduce(pair, reduce_op="sum")
        return float(pair[0] / pair[1]) if float(pair[1]) > 0 else None


def run_folder(trainer: pl.Trainer) -> Path:
    """The run's folder: the first logger's ``log_dir`` (``save_dir`` for loggers without one),
    else ``trainer.default_root_dir``. Unlike ``trainer.log_dir`` it needs no collective call."""
    logger = trainer.logger
    folder = (getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)) if logger else None
    return Path(folder or trainer.default_root_dir)


def _finite(values: list[tuple[int, float | None]]) -> tuple[list[int], list[float]]:
    kept = [(e, v) for e, v in values if v is not None and math.isfinite(v)]
    return [e for e, _ in kept], [v for _, v in kept]


def save_learning_curves(history: Mapping[int, Mapping[str, float]], path: str | os.PathLike, *,
                         loss: str = "val_loss", metric: str = "val_st_ap", title: str | None = None) -> None:
    """Write ``path`` (PNG, atomically): the losses (``train_loss`` and ``loss``) and ``metric``
    of ``history`` (``{epoch: {name: value}}``, epochs counted from 0 as in checkpoint names)
    against the epoch, side by side. Values that are missing or not finite are left out. Uses a
    bare matplotlib Figure (Agg canvas), like :func:`ssd_mnv1.metrics.plots.save_pr_curve`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = sorted(history)
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    loss_ax, metric_ax = fig.subplots(1, 2)
    for key, label, style in (("train_loss", "train loss (epoch mean)", "o-"), (loss, loss.replace("_", " "), "s-")):
        x, y = _finite([(e, history[e].get(key)) for e in epochs])
        if x:
            loss_ax.plot(x, y, style, label=label, linewidth=1.2, markersize=4)
    lines = [v for line in loss_ax.get_lines() for v in line.get_ydata()]
    if lines and min(lines) > 0 and max(lines) / min(lines) > 20:
        loss_ax.set_yscale("log")  # the first epochs' losses would flatten the rest
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss")
    x, y = _finite([(e, history[e].get(metric)) for e in epochs])
    if x:
        metric_ax.plot(x, y, "o-", color="tab:green", label=metric, linewidth=1.2, markersize=4)
        best = max(range(len(y)), key=y.__getitem__)
        metric_ax.plot([x[best]], [y[best]], "*", color="tab:red", markersize=12,
                       label=f"best {y[best]:.2f} (epoch {x[best]})")
    metric_ax.set_ylabel("ST-AP (%)" if "st_ap" in metric else metric)
    metric_ax.set_title("validation ST-AP" if metric == "val_st_ap" else metric)
    for ax in (loss_ax, metric_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if epochs:
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


class LearningCurves(pl.Callback):
    """Plot train loss, val loss and val ST-AP per epoch into ``learning_curves.png`` in the run folder.

    The train loss is the batch-size weighted mean of the epoch's step losses (the module logs
    ``train_loss`` per step only), over all ranks; ``loss`` and ``metric`` are read from
    ``trainer.callback_metrics`` when a fit's validation ends (the sanity check is skipped). The
    PNG is rewritten (atomically, by global rank 0) after a validation, or at an epoch's end when
    there was none, at most once per ``min_interval`` seconds (drawing costs ~0.3 s: with epochs of
    a few steps it would slow training), and always when the fit ends; the folder is ``dirpath``,
    else :func:`run_folder` (the logger's ``log_dir``, else ``trainer.default_root_dir``). The history travels in checkpoints, so a
    resumed fit goes on drawing the same curves. Its path is printed when the fit ends.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "learning_curves.png", loss: str = "val_loss",
                 metric: str = "val_st_ap", min_interval: float = 30.0):
        super().__init__()
        self.dirpath, self.filename, self.min_interval = dirpath, filename, float(min_interval)
        self._written_at = -math.inf
        self.loss_key, self.metric_key = loss, metric
        #: ``{epoch: {"train_loss": .., loss: .., metric: ..}}``, epochs counted from 0.
        self.history: dict[int, dict[str, float]] = {}
        self.path: Path | None = None  # the PNG, once written
        self._train = _EpochMean()
        self._plotted: dict[int, dict[str, float]] = {}

    def state_dict(self) -> dict:
        return {"history": {int(e): dict(v) for e, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = {int(e): dict(v) for e, v in state_dict.get("history", {}).items()}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._train.reset()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._train.add(_step_loss(trainer, pl_module, outputs), _batch_size(batch))

    def _record_train_loss(self, trainer: pl.Trainer, pl_module) -> None:
        mean = self._train.reduced(trainer, pl_module.device)  # all ranks
        if mean is not None:
            self.history.setdefault(trainer.current_epoch, {})["train_loss"] = mean

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._record_train_loss(trainer, pl_module)
        entry = self.history.setdefault(trainer.current_epoch, {})
        for key in (self.loss_key, self.metric_key):
            value = trainer.callback_metrics.get(key)
            if value is not None:
                entry[key] = float(value)
        self._write(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        self._record_train_loss(trainer, pl_module)
        self._write(trainer)  # only when something changed since the last write (no validation ran)

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        self._write(trainer, force=True)
        if trainer.is_global_zero and self.path is not None:
            print(f"learning curves: {self.path}", flush=True)

    def _write(self, trainer: pl.Trainer, force: bool = False) -> None:
        if not trainer.is_global_zero or not self.history or self.history == self._plotted:
            return
        if not force and time.monotonic() - self._written_at < self.min_interval:
            return
        self._written_at = time.monotonic()
        path = Path(self.dirpath) if self.dirpath else run_folder(trainer)
        path = path / self.filename
        title = f"{'/'.join(path.parent.parts[-3:])}: {len(self.history)} epoch{'s' if len(self.history) > 1 else ''}"
        save_learning_curves(self.history, path, loss=self.loss_key, metric=self.metric_key, title=title)
        self.path = path
        self._plotted = {e: dict(v) for e, v in self.history.items()}


# ------------------------------------------------------------------------------- progress lines
class LogProgressBar(ProgressBar):
    """A progress "bar" for logs: whole lines on stdout, never a carriage return.

    During training (and long validations, tests, predictions) one line when ``interval`` seconds
    passed since the last line, or every ``every_n_steps`` training steps when that is set, in the
    words of every log progress line (:func:`ssd_mnv1.progress.progress_line`)::

        epoch 3/999  step:  30% 120/400 [01:02<02:25, 1.93it/s]  train_loss 1.2345

    and one line per training epoch with the epoch's metrics (train loss: the epoch mean; the
    validation metrics only when a validation ran in that epoch)::

        epoch 3/999  400 steps in 03:27  train_loss 1.2102  val_loss 1.1536  val_st_ap 41.27

    ``trainer.fit`` picks it up like any progress bar callback (``callbacks=[LogProgressBar()]``);
    ``ssd_mnv1.fit`` uses it when stdout is not a terminal. Lines are printed by global rank 0.
    """

    def __init__(self, interval: float = 30.0, every_n_steps: int | None = None):
        super().__init__()
        self.interval = float(interval)
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._train = _EpochMean()
        self._epoch_t = self._line_t = self._eval_t = 0.0
        self._val_epoch: int | None = None

    # ---------------------------------------------------------------------- ProgressBar's API
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def print(self, *args, **kwargs) -> None:
        kwargs.setdefault("file", sys.stdout)
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)

    # -------------------------------------------------------------------------------- training
    def _epoch(self, trainer: pl.Trainer) -> str:
        last = trainer.max_epochs - 1 if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        return f"epoch {trainer.current_epoch}" + (f"/{last}" if last is not None else "")

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        if self._enabled:
            val = self.total_val_batches
            self.print(f"training: {_count(self.total_train_batches)} steps per epoch"
                       + (f", {_count(val)} validation batch{'es' if val != 1 else ''}" if val else "")
                       + (f", up to {trainer.max_epochs} epochs" if (trainer.max_epochs or -1) > 0 else ""))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._train.reset()
        self._epoch_t = self._line_t = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._enabled:
            return
        self._train.add(_step_loss(trainer, pl_module, outputs), _batch_size(batch))
        done, total = batch_idx + 1, self.total_train_batches
        now = time.monotonic()
        due = now - self._line_t >= self.interval or bool(self.every_n_steps and done % self.every_n_steps == 0)
        if not due or (isinstance(total, int) and done >= total):
            return  # the epoch line follows the last step
        self._line_t = now
        line = progress_line(done, total, now - self._epoch_t, desc=f"{self._epoch(trainer)}  step")
        mean = self._train.local()
        self.print(line + (f"  train_loss {mean:.4f}" if mean is not None else ""))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not self._enabled:
            return
        steps = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        parts = [self._epoch(trainer), f"{steps} steps in {format_interval(time.monotonic() - self._epoch_t)}"]
        mean = self._train.local()
        if mean is not None:
            parts.append(f"train_loss {mean:.4f}")
        validated = self._val_epoch == trainer.current_epoch
        for key, value in self.get_metrics(trainer, pl_module).items():
            if key in ("v_num", "train_loss") or (key.startswith("val") and not validated):
                continue
            parts.append(f"{key} {_value(key, value)}")
        self.print("  ".join(parts))

    # ------------------------------------------------------------------------------ evaluation
    def on_validation_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._eval_t = self._line_t = time.monotonic()

    on_test_start = on_predict_start = on_validation_start

    def _eval_batch(self, trainer: pl.Trainer, what: str, done: int, total) -> None:
        now = time.monotonic()
        if not self._enabled or trainer.sanity_checking or now - self._line_t < self.interval:
            return
        if isinstance(total, int) and done >= total:
            return
        self._line_t = now
        prefix = f"{self._epoch(trainer)}  " if trainer.state.fn == TrainerFn.FITTING else ""
        self.print(progress_line(done, total, now - self._eval_t, desc=f"{prefix}{what}", unit="batch"))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.has_dataloader_changed(dataloader_idx)
        self._eval_batch(trainer, "validation", batch_idx + 1, self.total_val_batches_current_dataloader)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.has_dataloader_changed(dataloader_idx)
        self._eval_batch(trainer, "test", batch_idx + 1, self.total_test_batches_current_dataloader)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.has_dataloader_changed(dataloader_idx)
        self._eval_batch(trainer, "predict", batch_idx + 1, self.total_predict_batches_current_dataloader)

    def _metrics_line(self, trainer: pl.Trainer, pl_module, what: str, prefix: str) -> None:
        items = [f"{k} {_value(k, v)}" for k, v in trainer.callback_metrics.items() if k.startswith(prefix)]
        elapsed = format_interval(time.monotonic() - self._eval_t)
        self.print(f"{what} done in {elapsed}" + "".join(f"  {i}" for i in items))

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        self.reset_dataloader_idx_tracker()
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.FITTING:
            self._val_epoch = trainer.current_epoch  # reported in the epoch line
        elif self._enabled:
            self._metrics_line(trainer, pl_module, "validation", "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module) -> None:
        self.reset_dataloader_idx_tracker()
        if self._enabled:
            self._metrics_line(trainer, pl_module, "test", "test")

    def on_predict_end(self, trainer: pl.Trainer, pl_module) -> None:
        self.reset_dataloader_idx_tracker()
        if self._enabled:
            self.print(f"predict done in {format_interval(time.monotonic() - self._eval_t)}")


def _count(n) -> str:
    return "?" if n is None or (isinstance(n, float) and not math.isfinite(n)) else str(int(n))


def _value(key: str, value) -> str:
    """ST-AP (percent) with 2 decimals, losses below 10 with 4, other floats with 2."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if not isinstance(value, float):
        return str(value)
    return f"{value:.4f}" if abs(value) < 10 and "st_ap" not in key else f"{value:.2f}"
