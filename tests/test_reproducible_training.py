"""Seeded training gives the same numbers under any machine load; what a step's time is spent on.

The thread count is decided once before the first step (the CPU plan, or ``data.torch_threads``)
and never changes unless ``--adaptive_threads true`` asks for it: a count that changes mid-run
changes float rounding, and so the result.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from ssd_mnv1.cpus import torch_threads
from ssd_mnv1.training import DetectionDataModule, SSDLightningModule, StepProfile
from ssd_mnv1.training.threads import AdaptiveThreads

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "lightning_configs" / "quickstart.yaml"


def _quickstart(root: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["fit", "--config", str(QUICKSTART), "--trainer.max_steps", "12", "--data.synthetic_train", "24",
            "--data.synthetic_val", "8", "--trainer.default_root_dir", str(root),
            "--trainer.logger.init_args.save_dir", str(root), "--trainer.enable_progress_bar", "false", *extra]
    env = {k: v for k, v in os.environ.items() if k != "SSD_MNV1_CPUS"}
    return subprocess.run([sys.executable, "-m", "ssd_mnv1.fit", *args], capture_output=True, text=True,
                          timeout=600, cwd=root, env={**env, "PYTHONWARNINGS": "ignore"})


def _spin(stop) -> None:
    while not stop.is_set():
        pass


@pytest.mark.slow
def test_seeded_quickstart_gives_identical_weights_on_a_quiet_and_on_a_busy_machine(tmp_path):
    (tmp_path / "quiet").mkdir()
    quiet = _quickstart(tmp_path / "quiet")
    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(2)]
    for hog in hogs:
        hog.start()
    try:
        (tmp_path / "busy").mkdir()
        busy = _quickstart(tmp_path / "busy")
    finally:
        stop.set()
        for hog in hogs:
            hog.join()
    for run in (quiet, busy):
        assert run.returncode == 0, run.stderr[-3000:]
    reports = [json.loads((tmp_path / name / "fit_report.json").read_text()) for name in ("quiet", "busy")]
    assert reports[0]["st_ap_after"] == reports[1]["st_ap_after"]
    assert reports[0]["steps"] == reports[1]["steps"] == 12
    weights = [torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
               for name in ("quiet", "busy")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_fit_adds_adaptive_threads_only_when_asked(tmp_path, monkeypatch):
    from ssd_mnv1.fit import SSDLightningCLI

    monkeypatch.setattr(sys, "argv", ["ssd_mnv1.fit"])

    def trainer(*extra):
        cli = SSDLightningCLI(SSDLightningModule, DetectionDataModule, run=False, args=[
            "--config", str(QUICKSTART), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--data.torch_threads", "null", *extra])
        return cli.trainer

    assert not any(isinstance(cb, AdaptiveThreads) for cb in trainer().callbacks)
    assert any(isinstance(cb, AdaptiveThreads) for cb in trainer("--adaptive_threads", "true").callbacks)


def test_torch_threads_runs_a_block_on_n_threads_and_restores_the_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_a_batch_of_samples_equals_its_samples_augmented_one_by_one():
    data = DetectionDataModule(synthetic_train=6, synthetic_val=2, input_size=192, batch_size=3, num_workers=0)
    data.setup()
    samples = data.train_dataloader().dataset
    keys = [(0, 11), (3, 11), (5, 11)]
    torch.manual_seed(0)
    batch = samples.__getitems__(keys)
    torch.manual_seed(0)
    one_by_one = [samples[k] for k in keys]
    for a, b in zip(batch, one_by_one):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])


def test_cpu_training_runs_channels_last_by_default_with_the_same_loss(tmp_path):
    data = DetectionDataModule(synthetic_train=4, synthetic_val=2, input_size=192, batch_size=4, num_workers=0)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    losses, outputs = {}, {}
    for channels_last in (None, False):
        torch.manual_seed(0)
        module = SSDLightningModule(input_size=192, channels_last=channels_last)
        module._trainer = pl.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
        module.setup("fit")
        conv = next(p for p in module.model.parameters() if p.dim() == 4 and p.shape[1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) == (channels_last is None)
        losses[channels_last] = module.training_loss(batch)[0].item()
        with torch.no_grad():
            outputs[channels_last] = module.model.eval()(module._images(batch))
    # training-mode BN over 27 layers amplifies the NHWC kernels' rounding; eval mode shows it as is
    assert losses[None] == pytest.approx(losses[False], rel=1e-3)
    for a, b in zip(outputs[None], outputs[False]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_step_profile_splits_each_step_and_writes_its_json(tmp_path):
    data = DetectionDataModule(synthetic_train=8, synthetic_val=2, input_size=192, batch_size=2, num_workers=0)
    profile = StepProfile(warmup=1, path=str(tmp_path / "profile.json"))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=[profile], default_root_dir=tmp_path)
    trainer.fit(SSDLightningModule(input_size=192), datamodule=data)
    saved = json.loads((tmp_path / "profile.json").read_text())
    assert len(saved["epochs"]) == 2 and all(s > 0 for s in saved["epochs"])
    # steps 2..8 of 8 (warmup 1), less the second epoch's first (its wait includes the loader's start)
    assert len(saved["steps"]) == 6
    for step in saved["steps"]:
        assert step["forward"] > 0 and step["backward"] > 0 and step["matching"] > 0 and step["optimizer"] > 0
    summary = saved["summary"]
    assert summary["images_per_s"] > 0
    assert summary["step"] >= summary["forward"] + summary["backward"]


def test_fit_report_check_fails_below_the_floor_and_passes_above(tmp_path):
    report = tmp_path / "fit_report.json"
    report.write_text(json.dumps({"st_ap_before": 2.0, "st_ap_after": 78.5, "steps": 800, "minutes": 2.5,
                                  "torch_threads": 1, "stopped_by_time": False}))
    check = [sys.executable, str(REPO / ".ci" / "check_fit_report.py"), str(report)]
    passed = subprocess.run([*check, "--floor", "77"], capture_output=True, text=True)
    assert passed.returncode == 0 and "78.50" in passed.stdout
    failed = subprocess.run([*check, "--floor", "79"], capture_output=True, text=True)
    assert failed.returncode == 1 and "below the floor 79" in failed.stderr
    no_before = tmp_path / "no_before.json"
    no_before.write_text(json.dumps({"st_ap_before": None, "st_ap_after": 50.0, "stopped_by_time": False}))
    plain = subprocess.run([*check[:2], str(no_before), "--floor", "40"], capture_output=True, text=True)
    assert plain.returncode == 0 and "50.00" in plain.stdout, plain.stderr
    missing = subprocess.run([*check[:2], str(tmp_path / "none.json"), "--floor", "1"], capture_output=True, text=True)
    assert missing.returncode == 1 and "none.json" in missing.stderr


def test_loader_workers_run_on_across_epochs_with_the_same_batches_for_the_same_seed():
    from ssd_mnv1.training.data import EpochStream

    def epochs(seed: int) -> list[list[list[str]]]:
        pl.seed_everything(seed)
        data = DetectionDataModule(synthetic_train=12, synthetic_val=2, input_size=128, batch_size=4, num_workers=1)
        data.setup()
        loader = data.train_dataloader()
        assert isinstance(loader, EpochStream) and len(loader) == 3
        return [[batch["files"] for batch in loader] for _ in range(3)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    assert first == again and first != other
    for epoch in first:
        assert len(epoch) == 3 and sorted(f for batch in epoch for f in batch) == sorted(
            f for batch in first[0] for f in batch)  # every image once per epoch
    assert first[0] != first[1]  # reshuffled


def test_a_fit_with_a_loader_worker_trains_every_epoch(tmp_path):
    data = DetectionDataModule(synthetic_train=8, synthetic_val=2, input_size=128, batch_size=4, num_workers=1)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0,
                         default_root_dir=tmp_path)
    trainer.fit(SSDLightningModule(input_size=128), datamodule=data)
    assert trainer.global_step == 6
