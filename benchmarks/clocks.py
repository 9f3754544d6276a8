"""Lightning callbacks that time a real ``usvl`` run from the inside (added with ``--trainer.callbacks+=clocks.X``).

The benchmarks run the console script's entry point in-process (:func:`usvl.cli.main`), so these classes resolve as
``clocks.StepClock``, ``clocks.EpochClock`` and ``clocks.PredictClock`` (``benchmarks/`` is the script's folder,
first on ``sys.path``); the benchmark reads the run's instance back from the class's ``latest``. On CUDA each reading
waits for the device.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


def now(pl_module: pl.LightningModule) -> float:
    """``time.perf_counter()`` once the module's device has finished its queued work."""
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)
    return time.perf_counter()


class StepClock(Callback):
    """Per training epoch: the images of its steps and the seconds from the start of its first step to the end of
    its last (data loading, augmentation, logging and the optimizer between them included).

    Attributes:
        epochs: ``(images, seconds)`` per training epoch, in order.
    """

    latest: StepClock | None = None
    """The instance created last (the running benchmark's)."""

    def __init__(self) -> None:
        StepClock.latest = self
        self.epochs: list[tuple[int, float]] = []
        self._start: float | None = None
        self._end = 0.0
        self._images = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._images = None, 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._start is None:
            self._start = now(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._end = now(pl_module)
        self._images += len(batch["image"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is not None:
            self.epochs.append((self._images, self._end - self._start))


class EpochClock(Callback):
    """Seconds of each whole training epoch (its steps, its validation and checkpointing) and of each test epoch.

    Attributes:
        fit_epochs: Seconds from each training epoch's start to its end (after its validation), in order.
        test_epochs: Seconds from each test epoch's start to its end.
    """

    latest: EpochClock | None = None
    """The instance created last (the running benchmark's)."""

    def __init__(self) -> None:
        EpochClock.latest = self
        self.fit_epochs: list[float] = []
        self.test_epochs: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = now(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_epochs.append(now(pl_module) - self._start)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = now(pl_module)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.test_epochs.append(now(pl_module) - self._start)


class PredictClock(Callback):
    """The images of a ``usvl predict`` run and the seconds from its start to its end (after the model is loaded:
    data loading, the forward passes and the prediction writer's files included).

    Attributes:
        images: Images predicted.
        seconds: Seconds from ``on_predict_start`` to ``on_predict_end`` (the writers, listed before this callback,
            have finished their files by then).
    """

    latest: PredictClock | None = None
    """The instance created last (the running benchmark's)."""

    def __init__(self) -> None:
        PredictClock.latest = self
        self.images = 0
        self.seconds = 0.0
        self._start = 0.0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = now(pl_module)

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self.images += len(batch["image"])

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = now(pl_module) - self._start
