"""Keep freed CPU memory in the process instead of handing it back to the kernel after every step.

glibc's ``malloc`` serves large blocks (a 32-image batch of 112 px feature maps is tens of MB) with fresh ``mmap``
calls and returns them with ``munmap`` when a tensor is freed, so every training step faults its activations' pages
in again: 200,000-300,000 minor page faults per step for the embedded encoder at batch 32 in a whole ``usvl fit``,
which ran 1.2x slower for it on a 2-core CPU (``BENCHMARKS.md``, "CPU fast paths"). :func:`keep_freed_memory`
tells glibc (``mallopt``) to take every block from the heap and never trim it, so after the first steps the same
memory is reused and the faults stop. The resident memory then stays at the run's peak instead of shrinking between
steps; the peak itself is unchanged.

Set ``USVL_ALLOCATOR=system`` to keep glibc's defaults. Elsewhere (macOS, musl, Windows) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

ALLOCATOR_VARIABLE = "USVL_ALLOCATOR"
"""``system`` keeps the C library's allocation settings."""

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
"""glibc ``mallopt`` parameters (``malloc.h``); a trim threshold of -1 turns trimming off."""

_applied = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse: no ``mmap`` for large blocks, no trimming of the heap's top.

    Runs once per process (later calls return the first call's answer); call it before the first large tensor.

    Returns:
        Whether the settings are in effect (``False`` when ``USVL_ALLOCATOR=system``, when the C library is not
        glibc, or when ``mallopt`` refused).
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ALLOCATOR_VARIABLE, "").lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    accepted = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1
    if not accepted:
        log.warning("glibc refused the allocator settings (mallopt); training runs with the default allocator")
    _applied = accepted
    return accepted


def keeping_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return _applied
