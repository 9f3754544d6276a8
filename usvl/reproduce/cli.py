"""``usvl reproduce``: run a grid (resumable, N runs at a time, or one cell for a SLURM array) and aggregate it."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from usvl.reproduce.grid import GridError, load_grid
from usvl.reproduce.runner import DONE_FILE, GridRunner, plan
from usvl.reproduce.slurm import slurm_script
from usvl.reproduce.test_sets import plan_tests, run_tests

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The ``usvl reproduce`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="usvl reproduce",
        description="Run an experiment grid (configs/reproduce/*.yaml: datasets x methods x seeds x few-shot "
                    "fractions) and aggregate it into <output>/table.md, table.csv and plots. Finished runs are "
                    "recognised by the hash of their resolved config and skipped, so an interrupted grid resumes. "
                    "A grid with test_sets (configs/shift/*.yaml) also tests every run on each test set and writes "
                    "<output>/shift_table.md and shift_table.csv.",
    )
    parser.add_argument("--grid", required=True, help="grid file, e.g. configs/reproduce/quick.yaml")
    parser.add_argument("--output", help="results folder (default: the grid file's output, e.g. results/quick)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time, each with cores/jobs threads")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and whether each is done; run nothing")
    parser.add_argument("--index", type=int, help="run only the cell with this index (a SLURM array task)")
    parser.add_argument("--aggregate-only", action="store_true", help="only rebuild the tables and plots")
    parser.add_argument("--no-aggregate", action="store_true", help="do not rebuild the tables and plots")
    parser.add_argument("--slurm-script", metavar="PATH",
                        help="write a SLURM job-array script for the grid to PATH (one array task per run) and exit")
    parser.add_argument("--slurm-option", action="append", default=[], metavar="OPTION",
                        help="extra #SBATCH option for --slurm-script, e.g. --slurm-option=--gres=gpu:1 (repeatable)")
    parser.add_argument("--slurm-max-parallel", type=int, help="at most this many array tasks at once")
    return parser


def reproduce_main(argv: Sequence[str]) -> int:
    """Run ``usvl reproduce``; returns the exit code (1 when a run failed or the grid is malformed)."""
    options = build_parser().parse_args(list(argv))
    try:
        grid = load_grid(options.grid, options.output)
    except GridError as error:
        print(f"usvl reproduce: {error}", file=sys.stderr)
        return 2
    if options.slurm_script:
        target = Path(options.slurm_script)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(slurm_script(grid, options.grid, options.slurm_option, options.slurm_max_parallel),
                          encoding="utf-8")
        target.chmod(0o755)
        print(f"Wrote {target}: {len(grid.cells)} array tasks. Submit with `sbatch {target}`.")
        return 0
    if options.index is not None and not 0 <= options.index < len(grid.cells):
        print(f"usvl reproduce: --index {options.index} outside 0..{len(grid.cells) - 1}", file=sys.stderr)
        return 2
    if not options.aggregate_only:
        print(f"Grid '{grid.name}' ({grid.path}): {len(grid.cells)} cells -> {grid.output}", flush=True)
    try:
        runs = plan(grid)
    except ValueError as error:
        print(f"usvl reproduce: {error}", file=sys.stderr)
        return 2
    if options.index is not None:
        runs = [run for run in runs if run.cell.index == options.index]
    tests = plan_tests(runs, grid.test_sets)
    if options.dry_run:
        print_plan(runs)
        if tests:
            todo = sum(1 for test in tests if not test.own and not test.done)
            print(f"{len(tests)} test-set results ({len(grid.test_sets)} test sets per run), {todo} tests to run")
        return 0
    failed = 0
    if not options.aggregate_only:
        # A batch system (or `kill`) stops a grid with SIGTERM: stop the runs cleanly, as on Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            failed = GridRunner(runs, jobs=options.jobs).run()
            if tests:
                failed += run_tests(tests, jobs=options.jobs)
        except KeyboardInterrupt:
            print("Grid stopped; finished runs are kept. Run the same command again to resume.", file=sys.stderr)
            return 130
    if not options.no_aggregate and options.index is None:
        from usvl.reproduce.results import aggregate

        written = aggregate(grid, runs)
        print("Results: " + ", ".join(str(path) for path in written))
    if failed:
        print(f"{failed} run(s) failed; their logs are in the *.failed-* folders. Rerun to retry them.",
              file=sys.stderr)
    return 1 if failed else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def print_plan(runs: Sequence) -> None:
    """One line per cell: index, block, dataset, method, fraction, seed, status and run folder."""
    header = f"{'#':>4}  {'block':<9} {'dataset':<13} {'method':<13} {'train':>5} {'seed':>4}  {'status':<11} folder"
    print(header)
    done = 0
    for run in runs:
        cell = run.cell
        if run.duplicate_of is not None:
            status = f"same as {run.duplicate_of}"
        elif (run.directory / DONE_FILE).is_file():
            status, done = ("done*" if run.grown_keys else "done"), done + 1
        else:
            status = "to do"
        fraction = "100%" if cell.fraction >= 100 else f"{cell.fraction:g}%"
        print(f"{cell.index:>4}  {cell.block:<9} {cell.dataset:<13} {cell.method:<13} {fraction:>5} {cell.seed:>4}  "
              f"{status:<11} {run.directory}")
    unique = sum(1 for run in runs if run.duplicate_of is None)
    print(f"{len(runs)} cells, {unique} distinct runs, {done} done, {unique - done} to do")
    grown = sorted({key for run in runs for key in run.grown_keys})
    if grown:
        print(f"done*: finished before these options existed (they run at their defaults): {', '.join(grown)}")
