"""Learning-rate schedules that size themselves from the trainer."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosineSchedule(LambdaLR):
    """Linear warm-up, then cosine decay to ``min_factor`` x the base learning rate, stepped per batch.

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
        """Size the schedule to the run."""
        self.total_steps = max(1, int(total_steps))

    def _factor(self, step: int) -> float:
        warmup = max(1, int(self.warmup_fraction * self.total_steps))
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
