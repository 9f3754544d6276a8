"""Callbacks that report on a run and write what it produces."""

from __future__ import annotations

import csv
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from PIL import Image

log = logging.getLogger(__name__)


class ClassificationPredictionWriter(BasePredictionWriter):
    """Write ``predictions.csv`` (image name, class probabilities, predicted class) after ``usvl predict``.

    Args:
        output_dir: Folder for the file; defaults to the run's log dir. An existing file is never overwritten:
            the new one gets a numbered name.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        """Write all predictions of the epoch as one CSV."""
        folder = Path(self.output_dir or trainer.log_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        path, index = folder / "predictions.csv", 0
        while path.exists():
            index += 1
            path = folder / f"predictions-{index}.csv"
        class_names = list(getattr(pl_module, "class_names", []))
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", *[f"p_{name}" for name in class_names], "prediction"])
            for batch in batches:
                for name, probabilities, predicted in zip(batch["name"], batch["probabilities"].tolist(),
                                                          batch["prediction"].tolist(), strict=True):
                    label = class_names[predicted] if class_names else predicted
                    writer.writerow([name, *[f"{p:.6f}" for p in probabilities], label])
        log.info("Predictions written to %s", path)


def unique_folder(folder: Path) -> Path:
    """``folder`` if it does not exist yet, else ``folder-1``, ``folder-2``, ... (never reuses a folder)."""
    candidate, index = folder, 0
    while candidate.exists():
        index += 1
        candidate = folder.with_name(f"{folder.name}-{index}")
    return candidate


class SegmentationPredictionWriter(BasePredictionWriter):
    """Write each predicted mask as a 0/255 PNG named like its image, after ``usvl predict``.

    Args:
        output_dir: Parent folder; defaults to the run's log dir. Masks go into a new ``predictions`` folder
            (``predictions-1``, ... if it exists), so earlier predictions are never overwritten.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.folder: Path | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Choose a fresh output folder for this prediction run."""
        self.folder = unique_folder(Path(self.output_dir or trainer.log_dir or ".") / "predictions")
        self.folder.mkdir(parents=True)

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        """Save the batch's masks."""
        for name, mask in zip(prediction["name"], prediction["mask"], strict=True):
            array = (mask.squeeze().cpu().numpy() > 0).astype(np.uint8) * 255
            Image.fromarray(array).save(self.folder / f"{Path(name).stem}.png")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Say where the masks went."""
        log.info("Predicted masks written to %s", self.folder)


def format_duration(seconds: float) -> str:
    """``1h02m03s``, ``2m03s`` or ``3s``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class EpochSummary(Callback):
    """Print one line per training epoch: training loss, validation metrics, elapsed time and the time left.

    For runs without a progress bar (output redirected to a file), which otherwise print nothing between the
    model summary and the final table. ``usvl`` adds it whenever the progress bar is off. Only the global-zero
    process prints.

    Args:
        stream: Where the lines go; defaults to standard output at the time of printing.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._started = 0.0
        self._first_epoch = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the clock."""
        self._started = time.perf_counter()
        self._first_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print the epoch's line (validation has run by now)."""
        if trainer.is_global_zero and not trainer.sanity_checking:
            print(self.line(trainer), file=self.stream or sys.stdout, flush=True)

    def line(self, trainer: pl.Trainer) -> str:
        """The summary line of the epoch that just ended."""
        epoch = trainer.current_epoch + 1
        metrics = trainer.callback_metrics
        parts = [f"epoch {epoch}/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0
                 else f"epoch {epoch}"]
        loss = metrics.get("train/loss_epoch", metrics.get("train/loss"))
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        parts += [f"{key} {float(value):.4f}" for key, value in sorted(metrics.items()) if key.startswith("val/")]
        elapsed = time.perf_counter() - self._started
        parts.append(f"elapsed {format_duration(elapsed)}")
        done = epoch - self._first_epoch
        if trainer.max_epochs and trainer.max_epochs > 0 and done > 0:
            parts.append(f"ETA {format_duration(elapsed / done * max(trainer.max_epochs - epoch, 0))}")
        return "  ".join(parts)
