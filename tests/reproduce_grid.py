"""A tiny ``usvl reproduce`` grid over the tiny data, run once per test session (tests of the grid and notebook)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from shipped_configs import CONFIGS, REPO

from usvl.reproduce.grid import load_grid

SMOKE = [str(CONFIGS / "trainer" / "smoke.yaml"), str(CONFIGS / "data" / "tiny.yaml")]


def write_grid(folder: Path, **overrides) -> Path:
    """A small grid over the tiny data: thyroid classification (2 methods) and segmentation (2 seeds), few-shot."""
    grid = {
        "name": "tiny",
        "output": str(folder / "results"),
        "datasets": {
            "thyroid_cls": {"config": str(CONFIGS / "thyroid_cls.yaml"), "task": "classification"},
            "thyroid_seg": {"config": str(CONFIGS / "thyroid_seg.yaml"), "task": "segmentation"},
        },
        "methods": {
            "mona_hybrid": {"args": {"model.init_args.adapter": str(CONFIGS / "adapters" / "mona_hybrid_effnet.yaml")}},
            "linear_probe": {"args": {"model.init_args.adapter": None}},
        },
        "blocks": [
            {"name": "main", "datasets": ["thyroid_cls"], "methods": ["mona_hybrid", "linear_probe"], "seeds": [1],
             "configs": SMOKE},
            {"name": "seg", "datasets": ["thyroid_seg"], "methods": ["linear_probe"], "seeds": [1, 2],
             "configs": SMOKE},
            {"name": "few_shot", "datasets": ["thyroid_cls"], "methods": ["mona_hybrid"], "seeds": [1],
             "fractions": [50, 100], "configs": SMOKE},
        ],
    }
    grid.update(overrides)
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(grid), encoding="utf-8")
    return path


def usvl_reproduce(*arguments: str) -> SimpleNamespace:
    """``usvl reproduce <arguments>`` in this process, from the repository root; its exit code and printed output.

    This saves the start-up of a ``python -m usvl`` process; the grid's runs are still ``python -m usvl fit``
    processes, started by the runner.
    """
    from usvl.cli import main

    printed = io.StringIO()
    with contextlib.chdir(REPO), contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = main(["reproduce", *arguments])
    return SimpleNamespace(returncode=code, stdout=printed.getvalue())


@pytest.fixture(scope="session")
def finished_grid(tmp_path_factory: pytest.TempPathFactory, usvl_cache: Path) -> dict:
    """Run the tiny grid: first one SLURM array index alone, then the rest (2 at a time) with an interrupted run."""
    from usvl.reproduce.runner import plan

    folder = tmp_path_factory.mktemp("grid")
    grid_file = write_grid(folder)
    single = usvl_reproduce("--grid", str(grid_file), "--index", "2", "--no-aggregate")
    runs = plan(load_grid(grid_file))
    assert single.returncode == 0, single.stdout[-3000:]
    done_after_index = [run.cell.index for run in runs if run.done]
    interrupted = runs[1].directory
    interrupted.mkdir(parents=True)
    (interrupted / "train.log").write_text("killed\n")
    full = usvl_reproduce("--grid", str(grid_file), "--jobs", "2")
    assert full.returncode == 0, full.stdout[-3000:]
    # A new process must find every run done: the config hashes do not depend on the process that computed them.
    environment = {**os.environ, "USVL_CACHE": str(usvl_cache), "USVL_THREADS": "1"}
    again = subprocess.run([sys.executable, "-m", "usvl", "reproduce", "--grid", str(grid_file), "--no-aggregate"],
                           capture_output=True, text=True, env=environment, cwd=REPO, timeout=300)
    return {"grid": load_grid(grid_file), "runs": runs, "done_after_index": done_after_index, "full": full,
            "again": again, "interrupted": interrupted}
