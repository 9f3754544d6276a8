"""Run reports: metrics as JSON next to the run, and a readable table on the console."""

from __future__ import annotations

import json
import math
import os
import resource
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def to_builtin(value: Any) -> Any:
    """Tensors and numpy scalars to plain Python numbers (for JSON)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_builtin(v) for v in value]
    return value


def write_json_unique(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write JSON to ``path``; if it exists, write ``<stem>-1.json``, ``-2``, ... so nothing is overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, index = path, 0
    while candidate.exists():
        index += 1
        candidate = path.with_name(f"{path.stem}-{index}{path.suffix}")
    candidate.write_text(json.dumps(to_builtin(payload), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return candidate


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write JSON to ``path`` through a temporary file, flushed to disk and renamed: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(to_builtin(payload), indent=2, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    return path


def format_metrics_table(metrics: Mapping[str, Any], title: str = "metrics") -> str:
    """A two-column text table of scalar metrics."""
    rows = [(k, v) for k, v in sorted(metrics.items()) if isinstance(v, int | float)]
    width = max([len(title)] + [len(k) for k, _ in rows])
    lines = [f"{title:<{width}}  value", f"{'-' * width}  ----------"]
    for key, value in rows:
        text = f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)
