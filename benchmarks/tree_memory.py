"""Memory of a process and its descendants (e.g. DataLoader workers), read with psutil while it runs.

Forked workers share the parent's pages copy-on-write, so the RSS summed over the tree counts every shared page once
per process that maps it: an upper bound of the tree's footprint. PSS (proportional set size: each shared page split
between the processes that map it) sums to the footprint itself, and USS (pages private to a process) to what the
tree would free if it ended. PSS and USS need ``/proc/<pid>/smaps_rollup`` (Linux), which costs tens of ms per
process for a torch process, so callers read them less often than the RSS (``memory_info``, microseconds).
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

MIB = 1024 * 1024


@dataclass(frozen=True)
class TreeMemory:
    """One reading of a process tree, in MiB; ``pss_mib`` and ``uss_mib`` are None when not read."""

    processes: int
    rss_mib: float
    main_rss_mib: float
    pss_mib: float | None = None
    uss_mib: float | None = None

    @property
    def workers_rss_mib(self) -> float:
        """The RSS of the descendants alone (summed)."""
        return self.rss_mib - self.main_rss_mib


def tree_memory(root: psutil.Process, full: bool = False) -> TreeMemory | None:
    """Sum the memory of ``root`` and all its descendants.

    A descendant that exits between being listed and being read, or has exited and awaits its parent, is left out.

    Args:
        root: The tree's main process.
        full: Also read PSS and USS (slow; Linux only, else they stay None).

    Returns:
        The reading, or None when ``root`` itself is gone (or has exited and awaits its parent's ``wait``).
    """
    try:
        processes = [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    rss = pss = uss = main_rss = 0
    counted = 0
    has_pss = full
    for process in processes:
        try:
            info = process.memory_full_info() if full else process.memory_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            if process is root:
                return None
            continue
        if not info.rss:  # a zombie: exited, not yet reaped
            if process is root:
                return None
            continue
        if process is root:
            main_rss = info.rss
        rss += info.rss
        pss += getattr(info, "pss", 0)
        uss += getattr(info, "uss", 0)
        has_pss = has_pss and hasattr(info, "pss")
        counted += 1
    return TreeMemory(processes=counted, rss_mib=rss / MIB, main_rss_mib=main_rss / MIB,
                      pss_mib=pss / MIB if has_pss else None, uss_mib=uss / MIB if full else None)
