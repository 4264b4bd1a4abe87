"""How many CPUs this process may use, and how to split them between loader workers and torch threads.

The machine's core count (``os.cpu_count()``) is not what a process gets: a container, ``taskset``
or a batch scheduler limits it through the CPU affinity mask or a cgroup quota. Oversubscribing
(torch threads + loader worker processes > CPUs) makes PyTorch's OpenMP threads wait for each
other at every op: on a 2-CPU machine 2 threads + 2 workers made a training step 30x slower
(issue #13). So the plan keeps ``workers + threads <= CPUs``.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path


#: Environment variable that caps the CPUs the plan uses (a machine shared with other jobs).
CPUS_ENV = "SSD_MNV1_CPUS"


def available_cpus() -> int:
    """CPUs this process may run on: the affinity mask, further capped by a cgroup v2 CPU quota
    and by ``$SSD_MNV1_CPUS`` when set."""
    if os.environ.get(CPUS_ENV):
        try:
            cap = int(os.environ[CPUS_ENV])
        except ValueError:
            raise ValueError(f"${CPUS_ENV} must be a whole number of CPUs, got {os.environ[CPUS_ENV]!r}") from None
        if cap < 1:
            raise ValueError(f"${CPUS_ENV} must be >= 1, got {cap}")
    else:
        cap = None
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    if cap is not None:
        count = min(count, cap)
    return max(1, count)


def _cgroup_quota(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """The cgroup v2 CPU limit in CPUs (``"200000 100000"`` -> 2.0), None when unlimited or unknown."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


@dataclass(frozen=True)
class CPUPlan:
    """Loader worker processes and torch intra-op threads for one training process."""

    cpus: int
    workers: int
    threads: int

    def describe(self) -> str:
        return (f"{self.cpus} CPU{'s' if self.cpus > 1 else ''} available -> {self.workers} loader "
                f"worker{'s' if self.workers != 1 else ''}, {self.threads} torch thread{'s' if self.threads != 1 else ''}")


def plan_cpus(workers: int | None = None, threads: int | None = None, *, accelerator: str = "cpu",
              purpose: str = "train", cpus: int | None = None) -> CPUPlan:
    """Split the available CPUs; an explicit ``workers`` / ``threads`` is kept as given.

    Training on the CPU: the workers take cores away from the compute, and with decoded images
    cached the loader only augments small images, so it gets a quarter of the CPUs (none at 2 or
    fewer: the main process augments between steps). With a GPU the compute does not need the
    CPUs, so the loader gets all but one. Evaluation (``purpose="evaluate"``): a JPEG costs about as
    much CPU as the model and post-processing of its image together, so decoding gets half the CPUs
    (1 to 4) and the runner and post-processing threads the rest.
    """
    if purpose not in ("train", "evaluate"):
        raise ValueError(f"purpose must be 'train' or 'evaluate', got {purpose!r}")
    cpus = available_cpus() if cpus is None else max(1, int(cpus))
    if workers is None:
        if purpose == "evaluate":
            workers = max(1, min(4, cpus // 2))
        else:
            workers = min(4, cpus // 4) if accelerator == "cpu" else min(8, cpus - 1)
    if threads is None:
        threads = max(1, cpus - workers) if accelerator == "cpu" else max(1, min(4, cpus - workers))
    if workers < 0 or threads < 1:
        raise ValueError(f"need workers >= 0 and threads >= 1, got workers={workers}, threads={threads}")
    return CPUPlan(cpus, int(workers), int(threads))


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch intra-op threads, then restore the count.

    For per-image work in the training process (augmenting with no loader workers): its ops are
    too small for a second thread to pay, and when another process holds a core the threads of a
    tiny op wait for each other (14x slower per image in a one-off timing beside two busy processes).
    It also fixes their arithmetic: some torch ops round differently with one thread and with more
    (bilinear ``F.interpolate`` / ``grid_sample``, measured), and loader workers, which PyTorch starts
    with one thread, must give the same pixels as the main process.
    """
    import torch

    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
