"""Learning-rate schedules, and the protocol of schedules that the trainer sizes."""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


@runtime_checkable
class SizedByTrainer(Protocol):
    """A schedule whose length is set from the trainer before the first optimisation step.

    The task calls ``set_total_steps(trainer.estimated_stepping_batches)`` in ``configure_optimizers`` for every
    scheduler that has this method.
    """

    def set_total_steps(self, total_steps: int) -> None:
        """Size the schedule to ``total_steps`` optimisation steps."""
        ...


class WarmupCosineSchedule(LambdaLR):
    """Linear warm-up, then cosine decay to ``min_factor`` x the base learning rate, stepped per batch.

    Optimisation step ``k`` (counting from 0) runs at ``(k + 1) / warmup_steps`` x the base rate during the warm-up,
    ``warmup_steps = max(1, int(warmup_fraction * total_steps))``, the first step included.

    Args:
        optimizer: The optimizer.
        warmup_fraction: Fraction of all steps spent warming up.
        min_factor: Final learning rate as a fraction of the base rate.
        total_steps: Number of optimisation steps; ``None`` lets the task set it from the trainer
            (``trainer.estimated_stepping_batches``) through :meth:`set_total_steps`.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_fraction: float = 0.05,
        min_factor: float = 0.01,
        total_steps: int | None = None,
    ) -> None:
        self.warmup_fraction = warmup_fraction
        self.min_factor = min_factor
        self.total_steps = total_steps or 1
        super().__init__(optimizer, self._factor)

    def set_total_steps(self, total_steps: int) -> None:
        """Size the schedule to the run, and set the learning rate of the current step for the new length.

        ``LambdaLR`` applies the factor of step 0 when it is built, before the run's length is known; without the
        update the first optimisation step would run at the factor of a one-step schedule (the full rate).
        """
        self.total_steps = max(1, int(total_steps))
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base_lr * self._factor(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _factor(self, step: int) -> float:
        warmup = max(1, int(self.warmup_fraction * self.total_steps))
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
