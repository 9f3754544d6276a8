"""Match torch's thread count to the cores this process may really use."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def available_cores() -> int:
    """Cores usable by this process: the CPU affinity set, capped by a cgroup CPU quota if one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota_file = Path("/sys/fs/cgroup/cpu.max")
    try:
        quota, period = quota_file.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (default: ``USVL_THREADS`` or the available cores).

    Oversubscribed threads ran 3-10x slower on small CPU machines, so this runs before any work.

    Returns:
        The thread count in use.
    """
    count = threads or int(os.environ.get("USVL_THREADS", 0)) or available_cores()
    torch.set_num_threads(count)
    return count
