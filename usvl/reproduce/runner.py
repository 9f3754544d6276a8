"""Run a grid's cells as ``usvl fit`` processes: one after another or N at a time, skipping finished runs.

Each cell runs in ``<output>/runs/<dataset>/<method>/<fraction>/seed<N>-<config hash>/``: the trainer's log dir, so
the folder gets the resolved ``config.yaml``, ``test_metrics.json``, ``test_cases.csv`` and the TensorBoard
events; ``train.log`` holds the process's output and ``run.json`` (written last, atomically) marks the run done.
A folder without ``run.json`` is a run that was interrupted: it is moved aside to ``<name>.interrupted-<k>`` and
the cell runs again; a failed run is kept as ``<name>.failed-<k>`` with its log. Nothing is overwritten.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from usvl.reproduce.grid import Cell, Grid
from usvl.reproduce.resolve import at_default, bare_defaults, config_hash, resolve_config
from usvl.utils.atomic import write_json_atomic, write_text_atomic
from usvl.utils.threads import available_cores

log = logging.getLogger(__name__)

DONE_FILE = "run.json"
"""Written last into a run directory: the run finished and its results are complete."""


@dataclass(frozen=True)
class PlannedRun:
    """A cell with its config hash and run directory.

    Attributes:
        cell: The grid cell.
        config_hash: Hash of its resolved config.
        directory: Its run directory.
        duplicate_of: Index of an earlier cell with the same resolved config (this one is not run again).
        grown_keys: Set when a finished run of an earlier config is reused (see :func:`grown_keys`): the options
            today's config has and that run's did not.
    """

    cell: Cell
    config_hash: str
    directory: Path
    duplicate_of: int | None = None
    grown_keys: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        """Whether the run finished (its ``run.json`` exists)."""
        return (self.directory / DONE_FILE).is_file()


RUN_LOCATION_KEYS = ("save_dir", "name", "version")
"""The logger keys the runner sets per run (``fit_command``); they are not part of a run's identity."""


RESULT_NEUTRAL_OPTIONS = ("save_last",)
"""Options that change what a run keeps on disk, not its results (``ModelCheckpoint.save_last``, turned on when
resuming after a kill came): a finished run whose config differs from today's only in them is reused."""


def grown_keys(stored: Any, resolved: Any, prefix: str = "") -> list[str] | None:
    """The options ``resolved`` adds to ``stored``, or ``None`` when a value ``stored`` has differs.

    A finished run stays valid when later code only added options (new keys, which a finished run ran without,
    so at the behaviour their defaults keep; :func:`finished_run_with_fewer_options` checks that they are at their
    defaults) or changed :data:`RESULT_NEUTRAL_OPTIONS` (listed too); any other changed value means the cell must
    run again.
    """
    if isinstance(stored, dict) and isinstance(resolved, dict):
        if set(stored) - set(resolved):
            return None
        added = [f"{prefix}{key}" for key in resolved if key not in stored]
        for key in stored:
            below = grown_keys(stored[key], resolved[key], f"{prefix}{key}.")
            if below is None:
                return None
            added += below
        return added
    if isinstance(stored, list) and isinstance(resolved, list) and len(stored) == len(resolved):
        added = []
        for index, (old, new) in enumerate(zip(stored, resolved, strict=True)):
            below = grown_keys(old, new, f"{prefix}{index}.")
            if below is None:
                return None
            added += below
        return added
    if stored == resolved:
        return []
    return [prefix.rstrip(".")] if _neutral(prefix.rstrip(".")) else None


def _neutral(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in RESULT_NEUTRAL_OPTIONS


def finished_run_with_fewer_options(folder: Path, seed: int, resolved: dict,
                                    defaults: Callable[[], dict]) -> tuple[Path, list[str]] | None:
    """A finished run of this cell in ``folder`` whose stored config ``resolved`` only adds options to.

    Each added option must be at its default (:func:`~usvl.reproduce.resolve.at_default`; ``defaults`` returns the
    bare ``usvl fit`` config) or be one of :data:`RESULT_NEUTRAL_OPTIONS`: the finished run ran without it, so at
    the behaviour its default keeps. An option added with another value (a method that sets a new switch) reruns.
    """
    if not folder.is_dir():
        return None
    for candidate in sorted(folder.glob(f"seed{seed}-*/{DONE_FILE}")):
        config_file = candidate.parent / "config.yaml"
        if not config_file.is_file():
            continue
        stored = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        logger = ((stored.get("trainer") or {}).get("logger") or {}).get("init_args")
        wanted = ((resolved.get("trainer") or {}).get("logger") or {}).get("init_args")
        if isinstance(logger, dict) and isinstance(wanted, dict):
            logger.update({key: wanted.get(key) for key in RUN_LOCATION_KEYS if key in logger})
        added = grown_keys(stored, resolved)
        if added is not None and all(_neutral(key) or at_default(key, resolved, defaults()) for key in added):
            return candidate.parent, added
    return None


def plan(grid: Grid) -> list[PlannedRun]:
    """Resolve every cell's config, hash it and place its run directory; cells with equal configs share one run.

    A cell whose own directory holds no finished run reuses a finished run of the same cell whose config differs
    only by options added since, at their defaults (:func:`grown_keys`), so that a new option with a default does
    not rerun a grid.
    """
    planned: list[PlannedRun] = []
    defaults = functools.cache(bare_defaults)
    first_by_hash: dict[str, PlannedRun] = {}
    for cell in grid.cells:
        resolved = resolve_config(cell.args)
        digest = config_hash(resolved)
        earlier = first_by_hash.get(digest)
        if earlier is not None:
            planned.append(PlannedRun(cell, digest, earlier.directory, earlier.cell.index))
            continue
        folder = grid.output / "runs" / cell.dataset / cell.method / cell.fraction_tag
        directory = folder / f"seed{cell.seed}-{digest}"
        run = PlannedRun(cell, digest, directory)
        if not run.done:
            reusable = finished_run_with_fewer_options(folder, cell.seed, yaml.safe_load(resolved) or {}, defaults)
            if reusable is not None:
                run = PlannedRun(cell, digest, reusable[0], grown_keys=tuple(reusable[1]))
        first_by_hash[digest] = run
        planned.append(run)
    return planned


def code_version() -> dict[str, Any]:
    """The code a run starts with: usvl's version and, in a git checkout, the commit and whether it was edited."""
    import usvl

    record: dict[str, Any] = {"usvl": getattr(usvl, "__version__", "unknown")}
    root = Path(usvl.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                 "usvl", "configs"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return record
    if commit.returncode == 0:
        record["git_commit"] = commit.stdout.strip()
        record["git_dirty"] = bool(status.stdout.strip())
    return record


def fit_command(run: PlannedRun) -> list[str]:
    """The ``usvl fit`` command of a run, writing into its run directory."""
    return [sys.executable, "-m", "usvl", "fit", *run.cell.args,
            "--trainer.logger.init_args.save_dir", str(run.directory),
            "--trainer.logger.init_args.name", "", "--trainer.logger.init_args.version", ""]


def set_aside(directory: Path, reason: str) -> Path:
    """Rename ``directory`` to ``<name>.<reason>-<k>`` with the first free ``k``; returns the new path."""
    index = 1
    while (target := directory.with_name(f"{directory.name}.{reason}-{index}")).exists():
        index += 1
    directory.rename(target)
    return target


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def headline(run: PlannedRun) -> str:
    """The run's main test metric for progress lines (AUROC or Dice), or an empty string."""
    path = run.directory / "test_metrics.json"
    if not path.is_file():
        return ""
    metrics = json.loads(path.read_text(encoding="utf-8")).get("metrics", {})
    key = "test/auroc" if run.cell.task == "classification" else "test/dice"
    return f"{key.split('/')[1]} {metrics[key]:.4f}" if key in metrics else ""


class GridRunner:
    """Run the planned runs that are not done, ``jobs`` at a time, each with ``cores / jobs`` torch threads.

    Args:
        runs: The planned runs (see :func:`plan`).
        jobs: Runs at the same time.
        stream: Where progress lines go (default: standard output).
    """

    def __init__(self, runs: list[PlannedRun], jobs: int = 1, stream: Any = None) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        self.runs = runs
        self.jobs = jobs
        self.stream = stream
        self.threads = max(1, available_cores() // jobs)
        self.failed: list[PlannedRun] = []
        self.code: dict[Path, dict[str, Any]] = {}

    def say(self, text: str) -> None:
        """Print a progress line."""
        print(text, file=self.stream or sys.stdout, flush=True)

    def pending(self) -> list[PlannedRun]:
        """Runs to do: not done and not a duplicate of another cell."""
        return [run for run in self.runs if run.duplicate_of is None and not run.done]

    def start(self, run: PlannedRun) -> tuple[subprocess.Popen, Any, float]:
        """Start one run's process (moving an interrupted attempt aside first)."""
        if run.directory.exists():
            moved = set_aside(run.directory, "interrupted")
            self.say(f"  an interrupted attempt of {run.cell.label} was moved to {moved}")
        run.directory.mkdir(parents=True)
        command = fit_command(run)
        write_text_atomic(run.directory / "command.txt", " ".join(command[1:]) + "\n")
        handle = (run.directory / "train.log").open("w", encoding="utf-8")
        environment = {**os.environ, "USVL_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1"}
        self.code[run.directory] = code_version()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment)
        return process, handle, time.time()

    def finish(self, run: PlannedRun, returncode: int, started: float, load_at_start: float) -> bool:
        """Mark a finished process's run done (``run.json``) or set it aside as failed; True when it succeeded."""
        seconds = time.time() - started
        metrics_file = run.directory / "test_metrics.json"
        if returncode == 0 and metrics_file.is_file():
            record = {"status": "done", "block": run.cell.block, "dataset": run.cell.dataset,
                      "method": run.cell.method, "task": run.cell.task, "seed": run.cell.seed,
                      "fraction": run.cell.fraction, "config_hash": run.config_hash,
                      "wall_seconds": round(seconds, 1), "threads": self.threads, "parallel_jobs": self.jobs,
                      "load_average_at_start": round(load_at_start, 2),
                      "load_average_at_end": round(os.getloadavg()[0], 2),
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": fit_command(run)[1:],
                      "code": self.code.get(run.directory, {})}
            write_json_atomic(run.directory / DONE_FILE, record)
            return True
        tail = (run.directory / "train.log").read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        moved = set_aside(run.directory, "failed")
        self.failed.append(run)
        self.say(f"  FAILED {run.cell.label} (exit code {returncode}); log: {moved / 'train.log'}\n    "
                 + "\n    ".join(tail))
        return False

    def run(self) -> int:
        """Run every pending run; returns the number that failed."""
        todo = self.pending()
        total = len(todo)
        skipped = sum(1 for run in self.runs if run.duplicate_of is None) - total
        self.say(f"{total} runs to do, {skipped} already done; {self.jobs} at a time with {self.threads} "
                 f"thread(s) each")
        running: list[tuple[PlannedRun, subprocess.Popen, Any, float, float]] = []
        try:
            self._loop(todo, running, total)
        except KeyboardInterrupt:
            for run, process, handle, _, _ in running:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                handle.close()
                self.say(f"  stopped {run.cell.label}; it runs again next time")
            raise
        return len(self.failed)

    def _loop(self, todo: list[PlannedRun], running: list, total: int) -> None:
        started_count, finished, durations, clock = 0, 0, [], time.time()
        while todo or running:
            while todo and len(running) < self.jobs:
                run = todo.pop(0)
                load = os.getloadavg()[0]
                process, handle, started = self.start(run)
                running.append((run, process, handle, started, load))
                started_count += 1
                self.say(f"[start {started_count}/{total}] {run.cell.label} -> {run.directory}")
            time.sleep(0.5)
            for entry in list(running):
                run, process, handle, started, load = entry
                if process.poll() is None:
                    continue
                handle.close()
                running.remove(entry)
                finished += 1
                ok = self.finish(run, process.returncode, started, load)
                durations.append(time.time() - started)
                left = len(todo) + len(running)
                eta = sum(durations) / len(durations) * left / self.jobs
                status = f"done in {format_duration(durations[-1])}  {headline(run)}" if ok else "failed"
                self.say(f"[{finished}/{total}] {run.cell.label}: {status}  (elapsed "
                         f"{format_duration(time.time() - clock)}, ETA {format_duration(eta)})")
