"""Smoke fits of the shipped experiments, run once per test session and shared by the tests that read them.

``usvl fit --config configs/<experiment>.yaml --config configs/trainer/smoke.yaml --config configs/data/tiny.yaml``
in this process, logging under a session folder. Tests that only need *a* finished run (its config, checkpoint,
test metrics or trained model) use these instead of fitting the same smoke run again. They must not change what
they are given; a test that needs another run of its own (e.g. a second run in the same folder) makes it itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from shipped_configs import smoke


@dataclass(frozen=True)
class SmokeFit:
    """A finished smoke fit.

    Attributes:
        save_dir: The logger's ``save_dir`` (``--trainer.logger.init_args.save_dir``).
        run: The run folder, ``<save_dir>/<experiment>/version_0``.
        config: The run's ``config.yaml``.
        checkpoint: The run's best checkpoint (the one its test metrics come from; ``last.ckpt`` sits next to it).
        model: The trained task, as the CLI left it after fit and test.
        args: The ``fit`` arguments after the subcommand (experiment, smoke and tiny-data configs, save_dir).
    """

    save_dir: Path
    run: Path
    config: Path
    checkpoint: Path
    model: object
    args: tuple[str, ...]


def smoke_fit(experiment: str, save_dir: Path) -> SmokeFit:
    """Smoke-fit ``configs/<experiment>.yaml`` under ``save_dir``."""
    from usvl.cli import run_lightning

    args = (*smoke(experiment), "--trainer.logger.init_args.save_dir", str(save_dir))
    cli = run_lightning(["fit", *args])
    run = save_dir / experiment / "version_0"
    checkpoint = Path(json.loads((run / "test_metrics.json").read_text(encoding="utf-8"))["checkpoint"])
    return SmokeFit(save_dir, run, run / "config.yaml", checkpoint, cli.model, args)


@pytest.fixture(scope="session")
def thyroid_cls_fit(tmp_path_factory: pytest.TempPathFactory, usvl_cache: Path) -> SmokeFit:
    """The smoke fit of ``configs/thyroid_cls.yaml`` (Mona classification, calibrated)."""
    return smoke_fit("thyroid_cls", tmp_path_factory.mktemp("thyroid_cls_fit"))


@pytest.fixture(scope="session")
def breast_seg_fit(tmp_path_factory: pytest.TempPathFactory, usvl_cache: Path) -> SmokeFit:
    """The smoke fit of ``configs/breast_seg.yaml`` (Mona segmentation)."""
    return smoke_fit("breast_seg", tmp_path_factory.mktemp("breast_seg_fit"))
