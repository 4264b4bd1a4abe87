"""The CPU plan never oversubscribes, follows the CPUs the process may use, and threads adapt to load."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from ssd_mnv1.cpus import _cgroup_quota, available_cpus, plan_cpus
from ssd_mnv1.training.threads import AdaptiveThreads, thread_candidates


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8, 16, 64])
@pytest.mark.parametrize("accelerator", ["cpu", "gpu"])
def test_default_plan_never_oversubscribes(cpus, accelerator):
    plan = plan_cpus(accelerator=accelerator, cpus=cpus)
    assert plan.threads >= 1 and plan.workers >= 0
    assert plan.workers + plan.threads <= max(cpus, 1 + plan.workers)  # 1 CPU: one thread, no worker
    if cpus <= 2 and accelerator == "cpu":
        assert plan.workers == 0 and plan.threads == cpus


def test_explicit_workers_and_threads_are_kept():
    plan = plan_cpus(3, 5, cpus=2)
    assert (plan.workers, plan.threads) == (3, 5)
    with pytest.raises(ValueError, match="threads >= 1"):
        plan_cpus(0, 0, cpus=2)


def test_available_cpus_follows_affinity_and_the_env_cap(monkeypatch):
    monkeypatch.delenv("SSD_MNV1_CPUS", raising=False)
    assert available_cpus() <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("SSD_MNV1_CPUS", "1")
    assert available_cpus() == 1
    monkeypatch.setenv("SSD_MNV1_CPUS", "two")
    with pytest.raises(ValueError, match="SSD_MNV1_CPUS must be a whole number"):
        available_cpus()


def test_cgroup_quota_is_read_in_cpus(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    assert _cgroup_quota(f) == 1.5
    f.write_text("max 100000\n")
    assert _cgroup_quota(f) is None
    assert _cgroup_quota(tmp_path / "missing") is None


def test_thread_candidates_go_from_the_maximum_down_to_one():
    assert thread_candidates(1) == [1]
    assert thread_candidates(2) == [2, 1]
    assert thread_candidates(8) == [8, 4, 2, 1]


def _run(callback: AdaptiveThreads, step_time, steps: int, monkeypatch) -> None:
    """Drive the callback for ``steps`` steps; ``step_time(threads)`` is the simulated step duration."""
    clock = [0.0]
    monkeypatch.setattr("ssd_mnv1.training.threads.time.perf_counter", lambda: clock[0])
    trainer = SimpleNamespace(accelerator=type("CPUAccelerator", (), {})(), global_step=0)
    callback.on_train_start(trainer, None)
    for step in range(steps):
        trainer.global_step = step
        callback.on_train_batch_start(trainer, None, None, step)
        clock[0] += step_time(torch.get_num_threads())
        callback.on_train_batch_end(trainer, None, None, None, step)


def test_adaptive_threads_drop_to_one_when_other_processes_slow_two_down(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        loaded = AdaptiveThreads(probe_steps=4, every=50, warmup=2)
        _run(loaded, lambda n: 1.15 if n == 2 else 0.51, 20, monkeypatch)  # the measured loaded case
        assert loaded.current == 1 and torch.get_num_threads() == 1
        assert loaded.history and loaded.history[0][2] == 1

        torch.set_num_threads(2)
        quiet = AdaptiveThreads(probe_steps=4, every=50, warmup=2)
        _run(quiet, lambda n: 0.08 if n == 2 else 0.14, 20, monkeypatch)  # quiet: 2 threads are faster
        assert quiet.current == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_adaptive_threads_do_nothing_on_a_gpu(monkeypatch):
    callback = AdaptiveThreads(probe_steps=2, every=5, warmup=0)
    monkeypatch.setattr("ssd_mnv1.training.threads.time.perf_counter", lambda: 0.0)
    trainer = SimpleNamespace(accelerator=type("CUDAAccelerator", (), {})(), global_step=0)
    callback.on_train_start(trainer, None)
    assert callback.candidates == []


def test_adaptive_threads_reprobe_as_soon_as_steps_slow_down(monkeypatch):
    """Quiet at first (2 threads kept), then another process starts: the slowdown triggers a probe
    long before the periodic one, and 1 thread wins."""
    before = torch.get_num_threads()
    step_no = {"n": 0}

    def step_time(threads: int) -> float:
        step_no["n"] += 1
        if step_no["n"] < 30:
            return 0.08 if threads == 2 else 0.14
        return 4.0 if threads == 2 else 0.5  # contended: 2 threads stall at every op

    try:
        torch.set_num_threads(2)
        callback = AdaptiveThreads(probe_steps=4, every=1000, warmup=2)
        _run(callback, step_time, 60, monkeypatch)
        assert [chosen for _, _, chosen in callback.history] == [2, 1]
        assert callback.history[1][0] < 45  # reacted within a few steps, not at step 1000
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
