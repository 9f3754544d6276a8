"""Test every finished run of a grid on further test sets: train once, test on N (a shift benchmark).

A grid file may list ``test_sets``: a name, a ``label`` and the ``args`` (dotted keys, as a method's) that turn a
run's data into that test set, e.g. ``{data.init_args.test_acquisition: low_freq}``. A test set without ``args``
is the run's own test split, whose results the fit already wrote. For every other one the runner calls
``usvl test --config <run>/config.yaml --ckpt_path <best checkpoint> <args>`` into
``<run>/test_sets/<name>-<hash of args>/``: the test's ``test_metrics.json`` and ``test_cases.csv`` land there and
``test_set.json`` (written last) marks it done, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usvl.reproduce.runner import PlannedRun, format_duration, set_aside
from usvl.utils.atomic import write_json_atomic, write_text_atomic
from usvl.utils.threads import available_cores

TEST_DONE_FILE = "test_set.json"
"""Written last into a test-set directory: its test finished."""


@dataclass(frozen=True)
class PlannedTest:
    """One run tested on one test set.

    Attributes:
        run: The trained run.
        name: The test set's name.
        args: The ``usvl test`` arguments that make the test set (empty: the run's own test split).
        directory: Where its results are (the run directory itself for the own test split).
    """

    run: PlannedRun
    name: str
    args: tuple[str, ...]
    directory: Path

    @property
    def own(self) -> bool:
        """Whether this is the run's own test split (tested by the fit)."""
        return not self.args

    @property
    def done(self) -> bool:
        """Whether its results exist."""
        if self.own:
            return (self.directory / "test_metrics.json").is_file()
        return (self.directory / TEST_DONE_FILE).is_file()

    @property
    def label(self) -> str:
        """``dataset / method / seed N / test set`` for progress lines."""
        return f"{self.run.cell.label} / {self.name}"


def evaluation_directory(run: PlannedRun, name: str, args: Sequence[str]) -> Path:
    """``<run>/test_sets/<name>-<8 hex digits of the args>`` (the run directory for its own test split)."""
    if not args:
        return run.directory
    digest = hashlib.sha256("\0".join(args).encode("utf-8")).hexdigest()[:8]
    return run.directory / "test_sets" / f"{name}-{digest}"


def plan_tests(runs: Sequence[PlannedRun], test_sets: Mapping[str, Mapping[str, Any]]) -> list[PlannedTest]:
    """Every distinct run on every test set, in grid order."""
    return [PlannedTest(run, name, tuple(spec["args"]), evaluation_directory(run, name, spec["args"]))
            for run in runs if run.duplicate_of is None for name, spec in test_sets.items()]


def best_checkpoint(run: PlannedRun) -> str:
    """The checkpoint the run's own test used (its ``test_metrics.json``), resolved against the run directory.

    A run folder moved since (a method renamed) still finds it: by its name in the run's ``checkpoints/``.

    Raises:
        FileNotFoundError: The run has no test metrics or no checkpoint file.
    """
    metrics = json.loads((run.directory / "test_metrics.json").read_text(encoding="utf-8"))
    checkpoint = metrics.get("checkpoint")
    path = Path(checkpoint) if checkpoint else None
    if path is not None and not path.is_absolute() and not path.is_file():
        path = run.directory / path
    if path is not None and not path.is_file():  # the run folder was moved (a method renamed): look beside it
        path = run.directory / "checkpoints" / path.name
    if path is None or not path.is_file():
        raise FileNotFoundError(f"{run.directory}: no checkpoint to test ({checkpoint!r} in test_metrics.json)")
    return str(path)


def evaluation_command(test: PlannedTest) -> list[str]:
    """The ``usvl test`` command of a test set, writing into its directory."""
    return [sys.executable, "-m", "usvl", "test", "--config", str(test.run.directory / "config.yaml"),
            "--ckpt_path", best_checkpoint(test.run), *test.args,
            "--trainer.logger.init_args.save_dir", str(test.directory),
            "--trainer.logger.init_args.name", "", "--trainer.logger.init_args.version", ""]


def run_tests(tests: Sequence[PlannedTest], jobs: int = 1, stream: Any = None) -> int:
    """Run the tests that are not done and whose run finished, ``jobs`` at a time; returns how many failed.

    A directory left by an interrupted test is moved aside (``.interrupted-<k>``), a failed one is kept as
    ``.failed-<k>`` with its ``test.log``.
    """
    def say(text: str) -> None:
        print(text, file=stream or sys.stdout, flush=True)

    todo = [t for t in tests if not t.own and not t.done and t.run.done]
    waiting = sum(1 for t in tests if not t.own and not t.run.done)
    say(f"{len(todo)} test-set runs to do" + (f" ({waiting} wait for their training run)" if waiting else ""))
    threads = max(1, available_cores() // max(1, jobs))
    running: list[tuple[PlannedTest, subprocess.Popen, Any, float]] = []
    failed, finished = 0, 0
    try:
        while todo or running:
            while todo and len(running) < jobs:
                test = todo.pop(0)
                if test.directory.exists():
                    set_aside(test.directory, "interrupted")
                test.directory.mkdir(parents=True)
                command = evaluation_command(test)
                write_text_atomic(test.directory / "command.txt", " ".join(command[1:]) + "\n")
                handle = (test.directory / "test.log").open("w", encoding="utf-8")
                environment = {**os.environ, "USVL_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
                running.append((test, subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                                       env=environment), handle, time.time()))
            time.sleep(0.5)
            for entry in list(running):
                test, process, handle, started = entry
                if process.poll() is None:
                    continue
                handle.close()
                running.remove(entry)
                finished += 1
                seconds = time.time() - started
                if process.returncode == 0 and (test.directory / "test_metrics.json").is_file():
                    write_json_atomic(test.directory / TEST_DONE_FILE, {
                        "status": "done", "test_set": test.name, "args": list(test.args),
                        "run": str(test.run.directory), "wall_seconds": round(seconds, 1),
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                    say(f"[test {finished}] {test.label}: done in {format_duration(seconds)}")
                else:
                    failed += 1
                    moved = set_aside(test.directory, "failed")
                    say(f"[test {finished}] {test.label}: FAILED (exit code {process.returncode}); log: "
                        f"{moved / 'test.log'}")
    except KeyboardInterrupt:
        for _, process, handle, _ in running:
            process.terminate()
            process.wait()
            handle.close()
        raise
    return failed
