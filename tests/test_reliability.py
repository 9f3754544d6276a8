"""Resume after a kill, determinism and DDP on real ``usvl`` processes (slow: ``make test-reliability``, run by CI).

Every resume and determinism run is the thyroid smoke run for 3 epochs on 75 % of the tiny training split,
deterministic, seed 0; the reference run is uninterrupted, with no data-loader workers. The DDP run is the plain
smoke run on 2 CPU processes (gloo).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from shipped_configs import REPO, smoke

pytestmark = pytest.mark.slow

RUN_ARGS = [*smoke("thyroid_cls"), "--trainer.max_epochs", "3", "--trainer.deterministic", "true",
            "--data.init_args.few_shot", "75"]
STARTUP_SECONDS = 600
"""How long a run may take to write its first ``last.ckpt`` on a busy CI machine."""


def fit_command(save_dir: Path, *extra: str) -> list[str]:
    """``python -m usvl fit`` of the test's run, logging under ``save_dir``."""
    return [sys.executable, "-m", "usvl", "fit", *RUN_ARGS, "--trainer.logger.init_args.save_dir", str(save_dir),
            *extra]


def environment() -> dict[str, str]:
    """This process's environment (cache, offline switches) with the repository and tests/ importable."""
    path = os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "USVL_THREADS": os.environ.get("USVL_THREADS", "1")}


def run_usvl(command: list[str]) -> str:
    """Run a ``usvl`` command to the end; returns its output (standard output and error)."""
    done = subprocess.run(command, capture_output=True, text=True, env=environment(), cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout + done.stderr


def run_fit(save_dir: Path, *extra: str) -> Path:
    """Run a fit to the end; returns its run folder (``version_0``)."""
    run_usvl(fit_command(save_dir, *extra))
    return save_dir / "thyroid_cls" / "version_0"


def test_metrics(run: Path) -> dict[str, float]:
    """The test metrics a run wrote after fit."""
    return json.loads((run / "test_metrics.json").read_text(encoding="utf-8"))["metrics"]


test_metrics.__test__ = False  # a helper, not a test


def assert_same_results(expected: Path, actual: Path) -> None:
    """Same test metrics (to 1e-6) and the same best checkpoint (epoch and score in its name)."""
    wanted, got = test_metrics(expected), test_metrics(actual)
    assert sorted(got) == sorted(wanted)
    assert got == pytest.approx(wanted, abs=1e-6, rel=0)
    best = {run: json.loads((run / "test_metrics.json").read_text())["checkpoint"] for run in (expected, actual)}
    assert Path(best[actual]).name == Path(best[expected]).name


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, usvl_cache: Path) -> Path:
    """The uninterrupted run."""
    return run_fit(tmp_path_factory.mktemp("reference"))


def test_the_same_config_and_seed_give_identical_test_metrics(reference: Path, tmp_path: Path) -> None:
    again = run_fit(tmp_path)
    assert_same_results(reference, again)


def test_splits_few_shot_subset_and_metrics_do_not_depend_on_the_number_of_workers(reference: Path,
                                                                                   tmp_path: Path) -> None:
    workers = run_fit(tmp_path, "--data.init_args.num_workers", "2")
    for name in ("splits.csv", "few_shot.csv"):
        assert (workers / name).read_bytes() == (reference / name).read_bytes(), name
    assert_same_results(reference, workers)


def test_a_fit_killed_mid_training_resumes_from_last_to_the_same_metrics(reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "thyroid_cls" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(fit_command(tmp_path, "--trainer.callbacks+=slow_epochs.PauseAfterFirstEpoch"),
                                   stdout=log, stderr=subprocess.STDOUT, env=environment(), cwd=REPO)
        deadline = time.monotonic() + STARTUP_SECONDS
        while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-5000:]
    assert last.is_file() and not (run / "test_metrics.json").exists()
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0  # killed in the second of three epochs
    for key in ("optimizer_states", "lr_schedulers", "loops", "callbacks"):
        assert checkpoint[key], key
    assert set(checkpoint["usvl"]["rng_states"]) >= {"python", "numpy", "torch"}

    resumed = run_fit(tmp_path, "--ckpt_path", "last")
    assert resumed == run and sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    assert_same_results(reference, resumed)


DDP = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]


def test_ddp_on_cpu_syncs_test_metrics_and_fills_the_text_cache_once(tmp_path: Path, usvl_cache: Path) -> None:
    text_cache = ["--text.cache_dir", str(tmp_path / "text")]  # empty: the DDP run must fill it
    output = run_usvl([sys.executable, "-m", "usvl", "fit", *smoke("thyroid_cls"), *text_cache, *DDP,
                       "--trainer.logger.init_args.save_dir", str(tmp_path / "ddp")])
    assert output.count("Text-embedding cache miss") == 1, output[-5000:]
    assert output.count("Text-embedding cache read on rank 1 (written by rank 0)") == 1
    run = tmp_path / "ddp" / "thyroid_cls" / "version_0"
    assert [path.name for path in run.glob("test_metrics*.json")] == ["test_metrics.json"]  # rank 0 writes once

    # AUROC and the rest over the whole test split, not over one rank's half: the same as one process gets
    best = json.loads((run / "test_metrics.json").read_text())["checkpoint"]
    run_usvl([sys.executable, "-m", "usvl", "test", *smoke("thyroid_cls"), *text_cache, "--ckpt_path", best,
              "--trainer.logger.init_args.save_dir", str(tmp_path / "single")])
    single = test_metrics(tmp_path / "single" / "thyroid_cls" / "version_0")
    assert test_metrics(run) == pytest.approx(single, abs=1e-6, rel=0) and "test/auroc" in single

    # the same for `usvl test` on 2 processes
    run_usvl([sys.executable, "-m", "usvl", "test", *smoke("thyroid_cls"), *text_cache, *DDP, "--ckpt_path", best,
              "--trainer.logger.init_args.save_dir", str(tmp_path / "ddp_test")])
    tested = tmp_path / "ddp_test" / "thyroid_cls" / "version_0"
    assert [path.name for path in tested.glob("test_metrics*.json")] == ["test_metrics.json"]
    assert test_metrics(tested) == pytest.approx(single, abs=1e-6, rel=0)
