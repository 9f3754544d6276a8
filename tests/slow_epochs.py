"""A callback that pauses a fit after its first epoch, so a test can kill the process mid-training (tests only)."""

from __future__ import annotations

import time

from lightning.pytorch import Callback


class PauseAfterFirstEpoch(Callback):
    """Sleep at the start of the second training epoch (after the first ``last.ckpt`` is written).

    Args:
        seconds: How long to sleep; the test kills the process meanwhile.
    """

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Sleep once, in epoch 1 (counting from 0)."""
        if trainer.current_epoch == 1:
            time.sleep(self.seconds)
