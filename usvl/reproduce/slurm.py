"""A SLURM job-array script for a grid: array index ``i`` runs cell ``i`` (``usvl reproduce --index i``)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from usvl.reproduce.grid import Grid


def slurm_script(grid: Grid, grid_argument: str, options: Sequence[str] = (), max_parallel: int | None = None,
                 workdir: str | Path | None = None) -> str:
    """The text of an ``sbatch`` job-array script with one array task per cell of ``grid``.

    Each task runs ``usvl reproduce --grid <grid> --index $SLURM_ARRAY_TASK_ID`` in ``workdir``, which runs that
    cell only (skipped when already done) and leaves the aggregation to ``usvl reproduce --grid <grid>
    --aggregate-only`` once the array has finished.

    Args:
        grid: The grid.
        grid_argument: The grid file as the script should name it.
        options: Extra ``#SBATCH`` options, e.g. ``--partition=gpu``, ``--gres=gpu:1``, ``--time=02:00:00``.
        max_parallel: At most this many array tasks at once (``%N``); None: no limit.
        workdir: The repository folder the tasks run in (default: the current folder).
    """
    last = len(grid.cells) - 1
    array = f"0-{last}" + (f"%{max_parallel}" if max_parallel else "")
    logs = grid.output / "slurm"
    lines = [
        "#!/bin/bash",
        f"# usvl reproduce, grid '{grid.name}': {len(grid.cells)} runs, one array task each.",
        f"# Submit with: sbatch {shlex.quote(str(logs / 'grid.sbatch'))}   then, when all are done:",
        f"#   usvl reproduce --grid {shlex.quote(grid_argument)} --aggregate-only",
        f"#SBATCH --job-name=usvl-{grid.name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --output={logs}/%A_%a.log",
        "#SBATCH --cpus-per-task=4",
        *[f"#SBATCH {option}" for option in options],
        "set -euo pipefail",
        f"cd {shlex.quote(str(Path(workdir or Path.cwd()).resolve()))}",
        f"usvl reproduce --grid {shlex.quote(grid_argument)} --output {shlex.quote(str(grid.output))} "
        "--index \"$SLURM_ARRAY_TASK_ID\" --no-aggregate",
    ]
    return "\n".join(lines) + "\n"
