"""Run reports: a readable table of metrics on the console and the peak memory of the process."""

from __future__ import annotations

import math
import resource
from collections.abc import Mapping
from typing import Any


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def format_metrics_table(metrics: Mapping[str, Any], title: str = "metrics") -> str:
    """A two-column text table of scalar metrics."""
    rows = [(k, v) for k, v in sorted(metrics.items()) if isinstance(v, int | float)]
    width = max([len(title)] + [len(k) for k, _ in rows])
    lines = [f"{title:<{width}}  value", f"{'-' * width}  ----------"]
    for key, value in rows:
        text = f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)
