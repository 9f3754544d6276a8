"""Write a grid's results: ``table.md``, ``table.csv``, ``runs.csv``, the plots (and shift tables) from its runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from usvl.reproduce.aggregate import markdown_table, summarise, summary_frame
from usvl.reproduce.grid import Grid
from usvl.reproduce.plots import write_plots
from usvl.reproduce.runner import PlannedRun
from usvl.reproduce.shift_table import write_shift_tables
from usvl.reproduce.test_sets import plan_tests
from usvl.utils.atomic import write_csv_atomic, write_text_atomic


def aggregate(grid: Grid, runs: Sequence[PlannedRun], resamples: int = 1000) -> list[Path]:
    """Write ``table.md``, ``table.csv``, ``runs.csv`` (one row per finished run) and the plots.

    A grid with ``test_sets`` also gets ``shift_table.md`` and ``shift_table.csv`` (:mod:`usvl.reproduce.shift_table`).

    Returns:
        The files written.
    """
    summaries = summarise(runs, resamples)
    grid.output.mkdir(parents=True, exist_ok=True)
    grid_file = grid.path.resolve()
    shown = grid_file.relative_to(Path.cwd()) if grid_file.is_relative_to(Path.cwd()) else grid_file
    command = f"usvl reproduce --grid {shown}"
    table_md = grid.output / "table.md"
    write_text_atomic(table_md, markdown_table(grid, summaries, command))
    table_csv = grid.output / "table.csv"
    write_csv_atomic(table_csv, summary_frame(summaries))
    per_run = [{"block": r.block, "dataset": r.dataset, "method": r.method, "task": r.task, "fraction": r.fraction,
                "seed": r.seed, "run": str(r.directory.relative_to(grid.output)) if r.directory.is_relative_to(
                    grid.output) else str(r.directory), "trainable_params": r.trainable_params,
                "fit_seconds": r.fit_seconds, **r.metrics} for s in summaries for r in s.records]
    runs_csv = grid.output / "runs.csv"
    write_csv_atomic(runs_csv, pd.DataFrame(per_run))
    written = [table_md, table_csv, runs_csv, *write_plots(grid, summaries)]
    if grid.test_sets:
        written += write_shift_tables(grid, plan_tests(runs, grid.test_sets), command)
    return written
