"""Resume after a hard kill: SIGKILL mid-epoch, `--ckpt_path last` resumes from the built-in last
checkpoint (ssd_mnv1.fit's `last_checkpoint`) and ends with the same step count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # training CLI subprocesses

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "lightning_configs" / "quickstart.yaml"
STEPS_PER_EPOCH = 6
EPOCHS = 2


def _command(root: Path, *extra) -> list[str]:
    """A small run whose last checkpoint is written every 2 optimizer steps (so a kill lands mid-epoch)."""
    return [sys.executable, "-m", "ssd_mnv1.fit", "fit", "--config", str(QUICKSTART),
            "--trainer.accelerator", "cpu", "--trainer.max_epochs", str(EPOCHS), "--trainer.max_time", "null",
            "--data.synthetic_train", str(2 * STEPS_PER_EPOCH), "--data.synthetic_val", "2",
            "--data.batch_size", "2", "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
            "--last_checkpoint.every_n_train_steps", "2", *extra]


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, weights_only=False, map_location="cpu")["global_step"])


def test_sigkill_mid_epoch_then_ckpt_path_last_resumes_to_the_same_optimizer_steps(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    full = subprocess.run(_command(tmp_path / "full"), capture_output=True, text=True, env=env, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    assert _step(tmp_path / "full" / "checkpoints" / "last.ckpt") == STEPS_PER_EPOCH * EPOCHS

    root = tmp_path / "killed"
    proc = subprocess.Popen(_command(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    last = root / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            step = _readable_step(last) if last.exists() else None
            if step is not None and 2 <= step <= STEPS_PER_EPOCH - 2:  # inside the first epoch
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _step(last)
    assert 0 < killed_at < STEPS_PER_EPOCH  # really mid-epoch
    # Nothing half-written under a final name: every checkpoint there loads.
    for ckpt in (root / "checkpoints").glob("*.ckpt"):
        _step(ckpt)

    resumed = subprocess.run(_command(root, "--ckpt_path", "last"), capture_output=True, text=True, env=env,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last.resolve()}" in resumed.stdout + resumed.stderr
    assert _step(last) == _step(tmp_path / "full" / "checkpoints" / "last.ckpt")


def _readable_step(path: Path) -> int | None:
    try:
        return _step(path)
    except Exception:  # being replaced right now
        return None
