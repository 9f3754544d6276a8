"""DomainShiftMonitor: remember the training domain's image statistics; report inputs outside them at test/predict.

During ``fit`` the training split's per-image statistics (:mod:`usvl.data.domain_stats`: mean grey level, its
standard deviation, lateral and axial neighbour correlation) give a percentile box that the task stores in its
checkpoints (``checkpoint["usvl"]["domain"]``). ``usvl test`` and ``usvl predict`` compute the same statistics of
every input and report the fraction outside the box: ``test/ood_fraction`` in the test metrics (and
``test_metrics.json``) and a log line, a warning when the fraction is well above what the training images give
themselves. Inputs are never refused.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from usvl.data.domain_stats import DomainRange, fit_domain_range, image_statistics, statistics_in_chunks

log = logging.getLogger(__name__)


class DomainShiftMonitor(Callback):
    """Store the training domain's statistics after setup; count test and predict inputs outside them.

    ``usvl`` adds it to every run. Models without a stored range (checkpoints saved before it existed, data modules
    without an in-memory training split) are left alone.

    Args:
        percentiles: Lower and upper percentile of the training statistics that bound the box.
        warn_above: A fraction outside the box above ``max(warn_above, 2 x the training images' own fraction)`` is
            logged as a warning (below it, as information).
    """

    def __init__(self, percentiles: tuple[float, float] = (1.0, 99.0), warn_above: float = 0.1) -> None:
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))
        self.warn_above = float(warn_above)
        self._counts = torch.zeros(2, dtype=torch.float64)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Compute the training split's statistics and give the model their box (stored with its checkpoints)."""
        datasets = getattr(trainer.datamodule, "datasets", None) or {}
        train = datasets.get("train")
        images = getattr(train, "images", None)
        if images is None or len(images) == 0:
            log.info("Domain statistics skipped: the data module has no in-memory training split")
            return
        box = fit_domain_range(statistics_in_chunks(images), self.percentiles)
        pl_module.domain_range = box.to_record()
        log.info("Training-domain statistics of %d images (percentiles %g-%g): %s; %.1f %% of the training images "
                 "fall outside", box.images, *box.percentiles,
                 ", ".join(f"{name} {low:.3g}..{high:.3g}" for name, low, high in zip(box.features, box.low,
                                                                                      box.high, strict=True)),
                 100.0 * box.train_outside)

    def _start(self) -> None:
        self._counts = torch.zeros(2, dtype=torch.float64)

    def _count(self, pl_module: pl.LightningModule, batch: Any) -> None:
        record = getattr(pl_module, "domain_range", None)
        if not record or not isinstance(batch, dict) or "image" not in batch:
            return
        outside = DomainRange.from_record(record).outside(image_statistics(batch["image"].detach().cpu()))
        self._counts += torch.tensor([float(outside.sum()), float(len(outside))], dtype=torch.float64)

    def _fraction(self, trainer: pl.Trainer) -> tuple[float, int] | None:
        counts = trainer.strategy.reduce(self._counts.clone(), reduce_op="sum")
        total = int(counts[1])
        return (float(counts[0]) / total, total) if total else None

    def _report(self, pl_module: pl.LightningModule, fraction: float, total: int, stage: str) -> None:
        box = DomainRange.from_record(pl_module.domain_range)
        level = max(self.warn_above, 2.0 * box.train_outside)
        message = (f"{100.0 * fraction:.1f} % of the {total} {stage} inputs fall outside the training range of image "
                   f"statistics (grey-level mean and spread, speckle correlation; percentiles "
                   f"{box.percentiles[0]:g}-{box.percentiles[1]:g} of {box.images} training images, of which "
                   f"{100.0 * box.train_outside:.1f} % fall outside)")
        if fraction > level:
            log.warning("%s: the acquisition differs from the training data; check the results on these inputs "
                        "(nothing was refused)", message)
        else:
            log.info(message)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start counting."""
        self._start()

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        """Count the batch's inputs outside the training range."""
        self._count(pl_module, batch)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log ``test/ood_fraction`` and the report line."""
        result = self._fraction(trainer)
        if result is None:
            return
        fraction, total = result
        pl_module.log("test/ood_fraction", fraction)
        self._report(pl_module, fraction, total, "test")

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start counting."""
        self._start()

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        """Count the batch's inputs outside the training range."""
        self._count(pl_module, batch)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the report line."""
        result = self._fraction(trainer)
        if result is not None:
            self._report(pl_module, *result, "predict")
