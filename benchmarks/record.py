"""What every benchmark records: the machine, the versions, the command, medians and spreads; its figure, printed last.

Each benchmark writes ``benchmarks/results/<name>.json`` through :func:`write_record` and prints its figure as its
last line (``name: value``) through :func:`print_figure`.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from usvl.utils.allocator import keep_freed_memory, keeping_freed_memory
from usvl.utils.threads import available_cores

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def run_in_process(threads: int) -> None:
    """Prepare this process for in-process ``usvl`` runs at ``threads`` torch threads.

    :func:`usvl.cli.main` sets the threads from ``USVL_THREADS``, so it is set here; the allocator setting that
    ``usvl`` applies (:func:`usvl.utils.allocator.keep_freed_memory`) is applied here too, so a plain loop in the same
    process runs under it whether it runs before or after ``usvl``; LightningCLI's warning that a script passing
    ``args`` also has its own command line is silenced.
    """
    os.environ["USVL_THREADS"] = str(threads)
    keep_freed_memory()
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")


def timed(run: Callable[[], int], repeats: int) -> list[float]:
    """Images/s of ``repeats`` calls of ``run`` (which returns the number of images it handled)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = run()
        rates.append(count / (time.perf_counter() - start))
    return rates


def summary(values: list[float], digits: int = 3) -> dict[str, Any]:
    """Median, min, max and spread (``(max - min) / median``) of repeated measurements, with the raw values."""
    median = statistics.median(values)
    return {"median": round(median, digits), "min": round(min(values), digits), "max": round(max(values), digits),
            "spread": round((max(values) - min(values)) / median, 3) if median else None,
            "runs": [round(v, digits) for v in values]}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """The machine and software a measurement ran on, with the 1-minute load average before and now."""
    import lightning
    import numpy

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _cpu_model(), "available_cores": available_cores(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "lightning": lightning.__version__, "numpy": numpy.__version__,
            "allocator": "freed memory kept (usvl.utils.allocator)" if keeping_freed_memory() else "system default",
            "usvl_commit": _git("rev-parse", "--short", "HEAD"), "usvl_dirty": bool(_git("status", "--porcelain"))}


def command() -> str:
    """The command line that ran this benchmark."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def write_record(name: str, record: dict[str, Any], output: Path | None = None) -> Path:
    """Write ``record`` (with the benchmark's name, the date and the command) to ``results/<name>.json``."""
    path = output or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"benchmark": name, "date": datetime.now(UTC).isoformat(timespec="seconds"), "command": command(),
            **record}
    path.write_text(json.dumps(full, indent=2) + "\n")
    print(f"written {path}")
    return path


def print_figure(name: str, value: float) -> None:
    """Print the benchmark's figure as its last line: ``name: value``."""
    print(f"{name}: {value:.3f}", flush=True)
