"""What a fit leaves for people to read: the learning-curve PNG and progress output fit for a log.

The fit runs on the CPU with procedurally generated images (no download, no ../shared).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
from PIL import Image
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.trainer.states import TrainerFn

from ssd_mnv1.progress import LogProgress, progress
from ssd_mnv1.training import (NO_AUGMENTATION, DetectionDataModule, LearningCurves, LogProgressBar,
                               SSDLightningModule, save_learning_curves)


def _png(path) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        image.load()  # decodes the whole file
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        return image


def _epoch_means(metrics_csv) -> dict[int, float]:
    steps: dict[int, list[float]] = {}
    for row in csv.DictReader(metrics_csv.open()):
        if row.get("train_loss"):
            steps.setdefault(int(row["epoch"]), []).append(float(row["train_loss"]))
    return {epoch: sum(v) / len(v) for epoch, v in steps.items()}


def test_tiny_fit_writes_learning_curves_and_plain_progress_lines(tmp_path, capsys):
    pl.seed_everything(0)
    data = DetectionDataModule(synthetic_train=4, synthetic_val=2, input_size=192, batch_size=2, num_workers=0,
                               augmentation=NO_AUGMENTATION)
    module = SSDLightningModule(input_size=192)
    curves = LearningCurves()
    logger = CSVLogger(tmp_path)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                         num_sanity_val_steps=0, log_every_n_steps=1, logger=logger, default_root_dir=tmp_path,
                         enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[curves, LogProgressBar(interval=0.0)])
    trainer.fit(module, datamodule=data)
    out = capsys.readouterr().out

    # one entry per epoch, train loss = the epoch mean of the logged step losses
    assert sorted(curves.history) == [0, 1]
    means = _epoch_means(Path(logger.log_dir) / "metrics.csv")
    for epoch, entry in curves.history.items():
        assert set(entry) == {"train_loss", "val_loss", "val_st_ap"}
        assert all(math.isfinite(v) for v in entry.values())
        assert entry["train_loss"] == pytest.approx(means[epoch], rel=1e-5)
    assert curves.history[1]["val_st_ap"] == pytest.approx(float(trainer.callback_metrics["val_st_ap"]))

    # the PNG is in the logger's run folder, whole, with no temporary file left beside it
    path = Path(logger.log_dir) / "learning_curves.png"
    assert curves.path == path
    _png(path)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert f"learning curves: {path}" in out

    # progress: whole lines only, one per epoch with its metrics, step lines in between
    assert "\r" not in out
    lines = out.splitlines()
    for epoch in (0, 1):
        (line,) = [ln for ln in lines if ln.startswith(f"epoch {epoch}/1  2 steps in ")]
        loss = curves.history[epoch]["train_loss"]
        assert f"train_loss {loss:.4f}" in line and "val_loss " in line and "val_st_ap " in line
        assert any(ln.startswith(f"epoch {epoch}/1  step:  50% 1/2 [") for ln in lines)


def test_learning_curves_skip_the_sanity_check_and_resume_their_history(tmp_path):
    curves = LearningCurves(dirpath=str(tmp_path))
    trainer = SimpleNamespace(sanity_checking=True, state=SimpleNamespace(fn=TrainerFn.FITTING))
    curves.on_validation_end(trainer, None)
    assert curves.history == {}
    curves.history = {0: {"train_loss": 2.0, "val_loss": 1.5, "val_st_ap": 3.0}}
    again = LearningCurves()
    again.load_state_dict(curves.state_dict())
    assert again.history == curves.history


def test_learning_curves_png_reads_with_one_epoch_and_missing_values(tmp_path):
    save_learning_curves({0: {"train_loss": 1.0, "val_loss": 0.9, "val_st_ap": 12.5}}, tmp_path / "one.png")
    _png(tmp_path / "one.png")
    history = {0: {"train_loss": 300.0}, 1: {"train_loss": 2.0, "val_loss": float("nan")},
               2: {"train_loss": 1.0, "val_loss": 0.8, "val_st_ap": 40.0}}
    save_learning_curves(history, tmp_path / "sparse.png")
    _png(tmp_path / "sparse.png")


def test_progress_writes_whole_lines_when_not_a_terminal():
    stream = io.StringIO()  # isatty() is False, as for a CI log or a pipe
    bar = progress(range(25), desc="decode", unit="img", file=stream)
    assert isinstance(bar, LogProgress)
    assert list(bar) == list(range(25))
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 11  # about every tenth, and the end
    assert all(line.startswith("decode: ") for line in lines)
    assert lines[-1].startswith("decode: 100% 25/25 [")

    stream = io.StringIO()
    with progress(total=3_000_000, unit="B", unit_scale=True, desc="md5 a.zip", file=stream) as manual:
        for _ in range(3):
            manual.update(1_000_000)
    assert stream.getvalue().splitlines()[-1].startswith("md5 a.zip: 100% 3.00M/3.00M [")

    stream = io.StringIO()  # a loop left by an error ends without a closing line
    with pytest.raises(RuntimeError), progress(total=4, desc="x", file=stream) as failing:
        failing.update(1)
        raise RuntimeError
    assert "100%" not in stream.getvalue()


def test_progress_is_tqdm_on_a_terminal_and_silent_when_disabled():
    from tqdm import tqdm

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = progress(range(3), desc="t", file=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
    stream = io.StringIO()
    assert list(progress(range(3), desc="off", disable=True, file=stream)) == [0, 1, 2]
    assert stream.getvalue() == ""


def test_fit_cut_short_by_max_time_says_so_loudly(tmp_path, capsys):
    """A run that max_time stops before its planned steps is not the configured run: FitReport says so."""
    from ssd_mnv1.training import FitReport

    pl.seed_everything(0)
    data = DetectionDataModule(synthetic_train=4, synthetic_val=2, input_size=192, batch_size=2, num_workers=0,
                               augmentation=NO_AUGMENTATION)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=10_000, max_time={"seconds": 1},
                         limit_val_batches=1, num_sanity_val_steps=0, logger=False, default_root_dir=tmp_path,
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                         callbacks=[FitReport(before=False)])
    trainer.fit(SSDLightningModule(input_size=192), datamodule=data)
    out = capsys.readouterr().out
    assert trainer.global_step < 10_000
    assert f"STOPPED EARLY by trainer.max_time (1 s) after {trainer.global_step} of max_steps 10000 steps" in out


def test_fit_that_ends_at_max_steps_gives_no_warning(tmp_path, capsys):
    from ssd_mnv1.training import FitReport

    data = DetectionDataModule(synthetic_train=4, synthetic_val=2, input_size=192, batch_size=2, num_workers=0,
                               augmentation=NO_AUGMENTATION)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, max_time={"hours": 1}, limit_val_batches=1,
                         num_sanity_val_steps=0, logger=False, default_root_dir=tmp_path, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=False, callbacks=[FitReport(before=False)])
    trainer.fit(SSDLightningModule(input_size=192), datamodule=data)
    assert "STOPPED EARLY" not in capsys.readouterr().out


def test_learning_curves_redraw_at_most_once_per_interval_and_always_when_the_fit_ends(tmp_path, monkeypatch):
    from ssd_mnv1.training import callbacks

    drawn = []
    monkeypatch.setattr(callbacks, "save_learning_curves", lambda history, path, **_: drawn.append(len(history)))
    curves = LearningCurves(dirpath=str(tmp_path), min_interval=3600.0)
    trainer = SimpleNamespace(is_global_zero=True)
    curves.history = {0: {"train_loss": 2.0}}
    curves._write(trainer)
    curves.history = {0: {"train_loss": 2.0}, 1: {"train_loss": 1.5}}
    curves._write(trainer)  # within the interval: not drawn
    assert drawn == [1]
    curves.on_fit_end(trainer, None)
    assert drawn == [1, 2]
