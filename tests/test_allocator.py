"""usvl.utils.allocator: freed tensor memory is reused instead of being faulted in again on every step."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting exists for glibc only")

PROBE = """
import resource, sys, torch
from usvl.utils.allocator import keep_freed_memory, keeping_freed_memory
applied = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):  # glibc settles its free lists within the first few blocks
    torch.ones(16 * 2**20)  # 64 MB, freed at once
before = faults()
for _ in range(10):
    torch.ones(16 * 2**20)
print(applied, keeping_freed_memory(), faults() - before)
"""


def _probe(**environment: str) -> tuple[bool, bool, int]:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                            env={**os.environ, **environment})
    applied, keeping, faults = result.stdout.split()
    return applied == "True", keeping == "True", int(faults)


def test_keep_freed_memory_stops_the_page_faults_of_repeated_large_tensors():
    applied, keeping, faults = _probe()
    assert applied and keeping
    # 10 x 64 MB freshly mapped would be ~160,000 faults of 4 KB pages; reused heap memory faults none.
    assert faults < 1_000


def test_usvl_allocator_system_keeps_the_default_allocator():
    applied, keeping, faults = _probe(USVL_ALLOCATOR="system")
    assert not applied and not keeping
    assert faults > 10 * 16_000  # each 64 MB block is mapped and faulted in again


def test_the_usvl_command_applies_the_setting(monkeypatch):
    import usvl.cli
    import usvl.utils.allocator

    calls = []
    monkeypatch.setattr(usvl.utils.allocator, "keep_freed_memory", lambda: calls.append(True) or True)
    with pytest.raises(SystemExit):
        usvl.cli.main(["data", "--help"])
    assert calls == [True]
