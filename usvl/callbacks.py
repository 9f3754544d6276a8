"""Callbacks that report on a run and write what it produces."""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TextIO

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from usvl.data.decode import original_grey
from usvl.data.dicom import is_dicom_path, output_stem
from usvl.data.dicom_seg import SEG_SUFFIX, new_series_uid, write_dicom_seg
from usvl.lexicon.readout import draw_readout, readout_columns, readout_lines, readout_row
from usvl.metrics.calibration import SCALINGS, THRESHOLD_METHODS, fit_calibration
from usvl.metrics.lesion_gate import fit_lesion_gate, image_dice, lesion_confidence
from usvl.utils.atomic import atomic_output, write_json_atomic, write_new

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("png", "dicom-seg")
"""Mask formats of :class:`SegmentationPredictionWriter` (``usvl predict --output_format``)."""


def unique_folder(folder: Path) -> Path:
    """``folder`` if it does not exist yet, else ``folder-1``, ``folder-2``, ... (never reuses a folder)."""
    candidate, index = folder, 0
    while candidate.exists():
        index += 1
        candidate = folder.with_name(f"{folder.name}-{index}")
    return candidate


def unique_file(folder: Path, stem: str, suffix: str = ".png") -> Path:
    """``folder/<stem><suffix>``, or ``<stem>-1<suffix>``, ... when taken (two images may share a stem)."""
    candidate, index = folder / f"{stem}{suffix}", 0
    while candidate.exists():
        index += 1
        candidate = folder / f"{stem}-{index}{suffix}"
    return candidate


def load_original(path: str | Path, frame: int | None = None) -> Image.Image:
    """The image file at its own size and orientation, as 8-bit grey by the loader's rule, in RGB for drawing.

    A DICOM is its ultrasound region (frame ``frame``, from 1, of a cine loop; see :mod:`usvl.data.dicom`).
    """
    return Image.fromarray(original_grey(path, frame)[0]).convert("RGB")


def mask_at_size(probability: torch.Tensor, size: tuple[int, int], threshold: float) -> np.ndarray:
    """Resize a lesion probability map ``[1, h, w]`` bilinearly to ``size`` (height, width) and threshold it.

    Resizing the probabilities rather than the binary mask keeps the lesion border smooth at any size.

    Returns:
        ``bool [height, width]``.
    """
    resized = F.interpolate(probability[None].float(), size=tuple(int(s) for s in size), mode="bilinear",
                            align_corners=False)
    return (resized[0, 0] > threshold).numpy()


def draw_overlay(image: Image.Image, text: str, mask: np.ndarray | None = None) -> Image.Image:
    """The image with the mask's contour in red (when given) and ``text`` in its top-left corner (Pillow only)."""
    side = min(image.size)
    if mask is not None and mask.any():
        width = 3 if side < 512 else 5 if side < 1500 else 9
        edges = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.FIND_EDGES)
        edges = edges.filter(ImageFilter.MaxFilter(width))
        image.paste((255, 40, 40), mask=edges)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, side // 20))
    left, top, right, bottom = draw.textbbox((4, 4), text, font=font)
    draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 80), font=font)
    return image


def batch_sources(batch: Any) -> tuple[list[str], list[tuple[int, int]]]:
    """The image paths and original ``(height, width)`` sizes of a prediction batch.

    Raises:
        KeyError: The batch lacks ``path`` or ``original_size``; predict with a usvl data module (its ``predict``
            batches carry both).
    """
    missing = [key for key in ("path", "original_size") if key not in batch]
    if missing:
        raise KeyError(f"The prediction batch has no {missing}: predict with a usvl data module (e.g. --data "
                       "usvl.data.FolderDataModule --data.root FOLDER), whose predict batches carry them")
    return list(batch["path"]), [(int(h), int(w)) for h, w in batch["original_size"].tolist()]


class PredictionWriter(BasePredictionWriter, ABC):
    """Write ``usvl predict`` results batch by batch into a new folder: ``predictions.csv`` and ``overlays/``.

    The folder is ``<output_dir>/predictions`` (``predictions-1``, ... if it exists), so earlier predictions are
    never overwritten. Rows are appended and flushed per batch to a hidden ``.predictions.csv.partial.tmp`` and
    nothing is kept per image, so memory stays flat over any number of images. When every image is done the file
    is synced and renamed to ``predictions.csv``, so that name always means a complete prediction; when prediction
    stops with an error, the rows so far are kept as ``predictions-incomplete.csv`` and a warning says how many.
    Subclasses define the CSV header and what each batch writes.

    Args:
        output_dir: Parent folder; defaults to the run's log dir.
        overlays: Also write ``overlays/<image stem>.png``: the original image with the prediction drawn on it.
    """

    def __init__(self, output_dir: str | None = None, overlays: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.overlays = overlays
        self.folder: Path | None = None
        self.count = 0
        self._handle: TextIO | None = None
        self._csv: Any = None
        self._frames: dict[str, int] = {}

    @abstractmethod
    def header(self, pl_module: pl.LightningModule) -> list[str]:
        """The CSV's column names."""

    @abstractmethod
    def batch_rows(self, pl_module: pl.LightningModule, prediction: Any, batch: Any) -> list[list[Any]]:
        """Write the batch's files and return its CSV rows (one per image)."""

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Choose a fresh output folder and start its CSV."""
        self.folder = unique_folder(Path(self.output_dir or trainer.log_dir or ".") / "predictions")
        self.folder.mkdir(parents=True)
        if self.overlays:
            (self.folder / "overlays").mkdir()
        self.count = 0
        self._handle = self.partial_path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._handle)
        self._csv.writerow(self.header(pl_module))

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        """Write the batch's files and append its rows to the CSV."""
        frames = batch.get("frame") if hasattr(batch, "get") else None
        self._frames = {} if frames is None else dict(zip(batch["name"], (int(f) for f in frames), strict=True))
        rows = self.batch_rows(pl_module, prediction, batch)
        self._csv.writerows(rows)
        self._handle.flush()
        self.count += len(rows)

    def overlay(self, path: str, name: str, text: str, mask: np.ndarray | None = None) -> str:
        """Write the overlay of one image (or DICOM frame); returns its path relative to the output folder."""
        if not self.overlays:
            return ""
        target = unique_file(self.folder / "overlays", output_stem(name))
        draw_overlay(load_original(path, self._frames.get(name) or None), text, mask).save(target)
        return target.relative_to(self.folder).as_posix()

    @property
    def partial_path(self) -> Path:
        """The CSV being written, before it is complete."""
        return self.folder / ".predictions.csv.partial.tmp"

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Close the CSV, put it in place as ``predictions.csv`` and say where the predictions went."""
        self._close(self.folder / "predictions.csv")
        log.info("Predictions of %d images written to %s", self.count, self.folder)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """When prediction stopped with an error, keep the rows so far as ``predictions-incomplete.csv``."""
        if self._handle is not None:
            target = self._close(self.folder / "predictions-incomplete.csv")
            log.warning("Prediction stopped after %d images; their rows are in %s (predictions.csv is only written "
                        "when every image is done)", self.count, target)

    def _close(self, target: Path) -> Path | None:
        if self._handle is None:
            return None
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        self.partial_path.replace(target)
        return target


class ClassificationPredictionWriter(PredictionWriter):
    """``predictions.csv`` (image name, class probabilities, predicted class, threshold) and an overlay per image.

    The probabilities are calibrated when the checkpoint stores a temperature, and with two classes the predicted
    class is the one at the checkpoint's stored threshold (``p_<class 1> >= threshold``); the ``threshold`` column
    says which threshold decided (empty: the argmax, with more than two classes or without a stored threshold).
    The model's calibration record (temperature, threshold, how it was chosen, validation metrics at it) is written
    next to the CSV as ``calibration.json``. The overlay is the original image with the predicted class and its
    probability. See :class:`PredictionWriter` for the folder and the arguments.

    A model with lexicon descriptor heads (:class:`~usvl.tasks.LexiconTask`, whose predictions carry a ``readout``)
    also gets, per image, the descriptors with their probabilities, the points, the category and the one-sentence
    report: extra CSV columns after those above, a ``json/<image stem>.json`` record for programs, and the overlay
    with a read-out panel below the image (:mod:`usvl.lexicon.readout`).
    """

    def header(self, pl_module: pl.LightningModule) -> list[str]:
        """``name``, ``p_<class>`` per class, ``prediction``, ``threshold`` (and the read-out's columns)."""
        columns = ["name", *[f"p_{name}" for name in self.class_names(pl_module)], "prediction", "threshold"]
        lexicon = getattr(pl_module, "lexicon", None)
        return columns + readout_columns(lexicon) if lexicon is not None else columns

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the folder and CSV (and ``json/`` for a model with a lexicon); write the calibration record."""
        super().on_predict_start(trainer, pl_module)
        if getattr(pl_module, "lexicon", None) is not None:
            (self.folder / "json").mkdir()
        record = getattr(pl_module, "calibration", None)
        if record:
            write_json_atomic(self.folder / "calibration.json", record)

    @staticmethod
    def class_names(pl_module: pl.LightningModule) -> list[str]:
        """The model's class names in label order."""
        return [str(name) for name in getattr(pl_module, "class_names", [])]

    def batch_rows(self, pl_module: pl.LightningModule, prediction: Any, batch: Any) -> list[list[Any]]:
        """One row per image; the overlay shows the predicted class and its probability."""
        class_names = self.class_names(pl_module)
        paths = batch_sources(batch)[0] if self.overlays else [""] * len(prediction["name"])
        threshold = prediction.get("threshold")
        threshold_text = "" if threshold is None else f"{float(threshold):.6f}"
        readouts = prediction.get("readout") or [None] * len(prediction["name"])
        lexicon = getattr(pl_module, "lexicon", None)
        rows = []
        for name, path, probabilities, predicted, readout in zip(
                prediction["name"], paths, prediction["probabilities"].tolist(), prediction["prediction"].tolist(),
                readouts, strict=True):
            label = class_names[predicted] if class_names else str(predicted)
            title = f"{label} p={probabilities[predicted]:.2f}"
            row = [name, *[f"{p:.6f}" for p in probabilities], label, threshold_text]
            if readout is None or lexicon is None:
                self.overlay(path, name, title)
                rows.append(row)
                continue
            record = {"name": str(name), "probabilities": dict(zip(class_names, probabilities, strict=False)),
                      "prediction": label, "threshold": threshold, **readout}
            json_path = unique_file(self.folder / "json", output_stem(name), ".json")
            write_json_atomic(json_path, record)
            if self.overlays:
                target = unique_file(self.folder / "overlays", output_stem(name))
                draw_readout(load_original(path, self._frames.get(name) or None), title, readout["sentence"],
                             readout_lines(lexicon, readout)).save(target)
            rows.append(row + readout_row(lexicon, readout, json_path.relative_to(self.folder).as_posix()))
        return rows


class SegmentationPredictionWriter(PredictionWriter):
    """Each lesion mask as a 0/255 PNG at the image's original size, an overlay, and a CSV row per image.

    The mask is the model's lesion probability map resized (bilinear) to the image's original size and thresholded
    at the model's ``threshold``; it is named like the image (``<stem>.png``, ``<stem>-1.png`` when two images share
    a stem). The overlay draws the mask's contour and the lesion probability on the original image.
    ``predictions.csv`` has ``name, width, height, p_lesion`` (the highest pixel probability), ``prediction``
    (``lesion`` or ``no lesion``, as the mask), ``lesion_area_px`` and ``lesion_area_mm2`` at the original size,
    and the ``mask`` and ``overlay`` files. See :class:`PredictionWriter` for the folder.

    DICOM inputs (:mod:`usvl.data.dicom`): the original size is the ultrasound region's, each frame of a cine loop is
    one row (``<name>#frame003``; files ``<stem>_frame003.png``), and ``lesion_area_mm2`` comes from the region's
    calibrated pixel spacing (else ``pixel_spacing_mm``; empty when neither is known: the count of such images is
    logged at the end). With ``output_format="dicom-seg"`` (``usvl predict --output_format dicom-seg``) the mask of a
    DICOM input is written as a DICOM Segmentation referencing its source instance and frame
    (``<stem>[_frame003].seg.dcm``, :func:`usvl.data.dicom_seg.write_dicom_seg`; one series per run) instead of a
    PNG; other inputs keep their PNG masks (a Segmentation needs a DICOM source), and their count is logged.

    Args:
        output_dir: Parent folder; defaults to the run's log dir.
        overlays: Also write the overlays.
        pixel_spacing_mm: Size of one pixel of the original images in mm, for ``lesion_area_mm2`` of images without
            a calibration of their own (one value for all of them). None: their column stays empty.
        output_format: ``png`` (mask PNGs) or ``dicom-seg`` (DICOM Segmentations for DICOM inputs; needs the
            ``dicom`` extra).

    Raises:
        ValueError: ``pixel_spacing_mm`` is not positive, or ``output_format`` is unknown.
    """

    def __init__(self, output_dir: str | None = None, overlays: bool = True,
                 pixel_spacing_mm: float | None = None, output_format: Literal["png", "dicom-seg"] = "png") -> None:
        super().__init__(output_dir, overlays)
        if pixel_spacing_mm is not None and not pixel_spacing_mm > 0:
            raise ValueError(f"pixel_spacing_mm must be positive, got {pixel_spacing_mm}")
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {list(OUTPUT_FORMATS)}, got {output_format!r}")
        self.pixel_spacing_mm = pixel_spacing_mm
        self.output_format = output_format
        self._series_uid: str | None = None
        self.not_dicom = 0
        self.no_spacing = 0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the folder and CSV; with ``dicom-seg``, check highdicom is there and start the run's series."""
        if self.output_format == "dicom-seg":
            self._series_uid = new_series_uid()
        super().on_predict_start(trainer, pl_module)
        self.not_dicom = self.no_spacing = 0

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Finish the CSV; say how many images had no pixel spacing, or no DICOM source for a Segmentation."""
        super().on_predict_end(trainer, pl_module)
        if self.no_spacing:
            log.info("%d of %d images have no pixel spacing (not a calibrated DICOM, no pixel_spacing_mm): their "
                     "lesion_area_mm2 is empty", self.no_spacing, self.count)
        if self.output_format == "dicom-seg" and self.not_dicom:
            log.warning("%d of %d images are not DICOM: their masks are PNG files (a DICOM Segmentation references "
                        "a DICOM source image)", self.not_dicom, self.count)

    def _image_spacing(self, spacing: Any) -> tuple[float, float] | None:
        """``(row, column)`` mm of one image: its own (DICOM calibration), else ``pixel_spacing_mm``, else None."""
        if spacing is not None:
            values = [float(v) for v in spacing]
            if all(math.isfinite(v) and v > 0 for v in values):
                return values[0], values[1]
        if self.pixel_spacing_mm is not None:
            return self.pixel_spacing_mm, self.pixel_spacing_mm
        return None

    def _write_mask(self, pl_module: pl.LightningModule, name: str, path: str, mask: np.ndarray) -> Path:
        """Write one mask: a DICOM Segmentation (``dicom-seg`` and a DICOM source) or a 0/255 PNG."""
        if self.output_format == "dicom-seg":
            if is_dicom_path(path):
                target = unique_file(self.folder, output_stem(name), SEG_SUFFIX)
                classes = getattr(pl_module, "lesion_classes", None) or getattr(pl_module, "class_names", [])
                return write_dicom_seg(path, self._frames.get(name) or None, mask, target, classes, self._series_uid)
            self.not_dicom += 1
        target = unique_file(self.folder, output_stem(name))
        Image.fromarray(mask.astype(np.uint8) * 255).save(target)
        return target

    def header(self, pl_module: pl.LightningModule) -> list[str]:
        """The CSV's columns (see the class docstring)."""
        return ["name", "width", "height", "p_lesion", "prediction", "lesion_area_px", "lesion_area_mm2", "mask",
                "overlay"]

    def batch_rows(self, pl_module: pl.LightningModule, prediction: Any, batch: Any) -> list[list[Any]]:
        """Write each image's mask and overlay; one row per image."""
        if "probability" not in prediction:
            raise KeyError("The segmentation predict_step returned no 'probability' (lesion probability map)")
        paths, sizes = batch_sources(batch)
        threshold = float(getattr(pl_module, "threshold", 0.5))
        spacings = batch["spacing"].tolist() if "spacing" in batch else [None] * len(paths)
        rows = []
        for name, path, size, probability, spacing in zip(prediction["name"], paths, sizes, prediction["probability"],
                                                          spacings, strict=True):
            mask = mask_at_size(probability, size, threshold)
            target = self._write_mask(pl_module, name, path, mask)
            area = int(mask.sum())
            p_lesion = float(probability.max())
            label = "lesion" if area else "no lesion"
            overlay = self.overlay(path, name, f"{label} p={p_lesion:.2f} area={area}px", mask)
            pixel = self._image_spacing(spacing)
            self.no_spacing += pixel is None
            area_mm2 = f"{area * pixel[0] * pixel[1]:.3f}" if pixel is not None else ""
            rows.append([name, size[1], size[0], f"{p_lesion:.6f}", label, area, area_mm2, target.name, overlay])
        return rows


class TestCaseWriter(Callback):
    """After ``test``: one CSV row per test image and overlays of the best and worst cases, in the run's log dir.

    ``test_cases.csv`` holds, for classification, ``name``, ``label``, ``p_<class>`` per class, ``prediction`` and
    ``p_true`` (the probability given to the true class); for segmentation, ``name`` and the per-image records of
    :class:`~usvl.metrics.SegmentationMetrics` (empty-mask ``case``, ``dice``, ``iou``, ``hd95``, ``asd``, pixel
    counts). Cases are ranked by ``p_true`` (classification) or Dice (segmentation); ``test_cases/best-<i>.png`` and
    ``worst-<i>.png`` show the image as the model saw it with the prediction (red contour) and the ground truth
    (green contour) for segmentation, or the true and predicted class for classification. The aggregation of
    ``usvl reproduce`` reads both (bootstrap intervals, ROC curves, best/worst overlays). ``usvl`` adds this callback
    to every run; only the global-zero process of a single-process run writes.

    Args:
        overlays: How many best and how many worst cases to draw (0: none).
    """

    def __init__(self, overlays: int = 2) -> None:
        self.overlays = overlays
        self._rows: list[dict[str, Any]] = []
        self._best: list[tuple[float, int, dict[str, Any]]] = []
        self._worst: list[tuple[float, int, dict[str, Any]]] = []

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Forget the cases of an earlier test."""
        self._rows, self._best, self._worst = [], [], []

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        """Record each image's name, target and prediction (``outputs`` is the task's ``StepOutput``)."""
        if outputs is None or not hasattr(outputs, "predictions") or "name" not in batch:
            return
        predictions = outputs.predictions.detach().float().cpu()
        target = outputs.target.detach().cpu()
        segmentation = predictions.ndim == 4
        class_names = [str(name) for name in getattr(pl_module, "class_names", [])]
        if not segmentation and predictions.ndim == 1:
            predictions = torch.stack([1 - predictions, predictions], dim=1)
        for i, name in enumerate(batch["name"]):
            if segmentation:
                pred = predictions[i, 0] > 0.5
                true = target[i].reshape(pred.shape).bool()
                total = int(pred.sum() + true.sum())
                score = 1.0 if total == 0 else 2.0 * float((pred & true).sum()) / total
                row: dict[str, Any] = {"name": str(name)}
                case = {"pred": pred.numpy(), "true": true.numpy(), "text": f"{name}  Dice {score:.3f}"}
            else:
                probabilities = predictions[i].tolist()
                label, predicted = int(target[i]), int(predictions[i].argmax())
                names = class_names or [str(k) for k in range(len(probabilities))]
                score = float(probabilities[label])
                row = {"name": str(name), "label": names[label],
                       **{f"p_{names[k]}": round(p, 6) for k, p in enumerate(probabilities)},
                       "prediction": names[predicted], "p_true": round(score, 6)}
                confidence = max(probabilities)
                case = {"text": f"{name}  true {names[label]}  predicted {names[predicted]} (p={confidence:.2f})"}
            self._rows.append(row)
            if self.overlays:
                case["image"] = batch["image"][i].detach().cpu()
                self._keep(score, len(self._rows), case)

    def _keep(self, score: float, order: int, case: dict[str, Any]) -> None:
        self._best = sorted([*self._best, (score, order, case)], key=lambda c: (-c[0], c[1]))[: self.overlays]
        self._worst = sorted([*self._worst, (score, order, case)], key=lambda c: (c[0], c[1]))[: self.overlays]

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Join the segmentation metrics' per-image records (before the task resets them), then write."""
        metrics = pl_module.stage_metrics("test") if hasattr(pl_module, "stage_metrics") else None
        for metric in (metrics.values() if metrics is not None else []):
            if hasattr(metric, "per_image") and getattr(metric, "update_called", False):
                records = metric.per_image()
                if len(records) == len(self._rows):
                    for row, record in zip(self._rows, records, strict=True):
                        row.update({k: v for k, v in record.items() if k != "index"})
                else:
                    log.warning("Per-image test metrics of %d images for %d names: test_cases.csv keeps names only",
                                len(records), len(self._rows))
        if self._rows and trainer.is_global_zero and trainer.world_size == 1:
            self.write(Path(trainer.log_dir or "."))

    def write(self, folder: Path) -> Path:
        """Write ``test_cases.csv`` (a new name when one exists) and the best/worst overlays into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        columns = list(dict.fromkeys(key for row in self._rows for key in row))

        def write_rows(temporary: Path) -> None:
            with temporary.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self._rows)

        path = write_new(folder / "test_cases.csv", write_rows)
        if self._best:
            cases = unique_folder(folder / path.stem)
            cases.mkdir(parents=True)
            for kind, kept in (("best", self._best), ("worst", self._worst)):
                for rank, (_, _, case) in enumerate(kept, start=1):
                    case_overlay(case).save(cases / f"{kind}-{rank}.png")
        log.info("Per-image test results written to %s", path)
        return path


def case_overlay(case: dict[str, Any]) -> Image.Image:
    """A test image (``[C, H, W]`` uint8) with the ground truth in green and the prediction in red, and a caption."""
    image = case["image"]
    grey = image[0] if image.ndim == 3 else image
    picture = Image.fromarray(grey.to(torch.uint8).numpy()).convert("RGB")
    if "true" in case and case["true"].any():
        edges = Image.fromarray(case["true"].astype(np.uint8) * 255).filter(ImageFilter.FIND_EDGES)
        picture.paste((40, 220, 40), mask=edges.filter(ImageFilter.MaxFilter(3)))
    return draw_overlay(picture, case["text"], case.get("pred"))


def store_calibration(checkpoint_path: str | Path, record: dict[str, Any], key: str = "calibration") -> None:
    """Add a record (the calibration or the lesion gate) to a checkpoint file as ``checkpoint["usvl"][key]``."""
    path = Path(checkpoint_path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    checkpoint.setdefault("usvl", {})[key] = dict(record)
    with atomic_output(path) as temporary:
        torch.save(checkpoint, temporary)


def validation_outputs(trainer: pl.Trainer, pl_module: pl.LightningModule,
                       step: Callable[[dict[str, Any]], tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """``step``'s tensors over the validation split, each concatenated along its first dimension, in evaluation mode.

    Reads the data module's validation loader (as many batches as validation ran during fit, so
    ``limit_val_batches`` applies; the images' names let the frozen-feature cache serve them), under the trainer's
    precision and with the random state forked and every module's train/eval mode restored afterwards, so what runs
    next (the test) is unaffected. Returns an empty list when there are no validation batches.
    """
    datamodule = trainer.datamodule
    loader = datamodule.val_dataloader() if datamodule is not None else trainer.val_dataloaders
    loader = loader[0] if isinstance(loader, list | tuple) else loader
    counts = trainer.num_val_batches
    limit = counts[0] if counts else math.inf
    modes = {module: module.training for module in pl_module.modules()}
    pl_module.eval()
    outputs: list[tuple[torch.Tensor, ...]] = []
    devices = [pl_module.device.index or 0] if pl_module.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode(), \
                trainer.precision_plugin.forward_context():
            for index, batch in enumerate(loader):
                if index >= limit:
                    break
                outputs.append(tuple(tensor.cpu() for tensor in step(batch)))
    finally:
        for module, training in modes.items():
            module.train(training)
    return [torch.cat(parts) for parts in zip(*outputs, strict=True)] if outputs else []


def validation_logits(trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
    """View logits ``[V, N, K]`` and labels ``[N]`` of the validation split (:func:`validation_outputs`)."""
    def step(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = pl_module.view_logits(batch["image"].to(pl_module.device), batch.get("name")).float()
        return logits.transpose(0, 1), batch["label"].long()

    outputs = validation_outputs(trainer, pl_module, step)
    if not outputs:
        return torch.empty(1, 0, pl_module.num_classes), torch.empty(0, dtype=torch.long)
    return outputs[0].transpose(0, 1), outputs[1]


def validation_gate_inputs(trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[torch.Tensor]:
    """Lesion confidence, ungated per-image Dice and "no lesion" flags ``[N]`` of the validation split."""
    def step(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        masks = batch["mask"].to(pl_module.device)
        probability = pl_module(batch["image"].to(pl_module.device), output_size=masks.shape[-2:]).float().sigmoid()
        predicted = probability > pl_module.threshold
        empty = ~masks.flatten(1).bool().any(dim=1)
        return lesion_confidence(probability, pl_module.threshold), image_dice(predicted, masks), empty

    return validation_outputs(trainer, pl_module, step)


def save_reliability_diagram(reliability: dict[str, Any], path: Path, positive_class: str | None = None) -> Path:
    """A reliability diagram (matplotlib PNG): observed frequency against predicted probability per bin.

    Args:
        reliability: ``bins`` (``calibrated`` and ``uncalibrated``, each as
            :func:`~usvl.metrics.calibration.reliability_bins`), ``num_classes``, ``temperature``, ``threshold``,
            ``ece`` and ``ece_uncalibrated`` (what a calibrated classifier keeps after its test).
        path: The PNG to write.
        positive_class: Name of class 1 (two classes), for the axis label.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 5.6))
    FigureCanvasAgg(figure)
    axis, counts = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    binary = reliability.get("num_classes") == 2
    width = 1.0 / len(reliability["bins"]["calibrated"]["count"])
    for key, colour, ece in (("uncalibrated", "tab:orange", reliability.get("ece_uncalibrated")),
                             ("calibrated", "tab:blue", reliability.get("ece"))):
        bins = reliability["bins"][key]
        kept = [(c, f, n) for c, f, n in zip(bins["confidence"], bins["frequency"], bins["count"], strict=True) if n]
        label = f"{key}" + (f" (ECE {ece:.3f})" if ece is not None else "")
        if key == "calibrated":
            label += f", T = {reliability.get('temperature', 1.0):.2f}"
        axis.plot([c for c, _, _ in kept], [f for _, f, _ in kept], marker="o", color=colour, label=label)
        if key == "calibrated":
            centres = [(i + 0.5) * width for i in range(len(bins["count"]))]
            counts.bar(centres, bins["count"], width=width * 0.9, color=colour)
    if binary and reliability.get("threshold") is not None:
        axis.axvline(reliability["threshold"], color="tab:red", linewidth=1,
                     label=f"stored threshold {reliability['threshold']:.3f}")
    what = f"p({positive_class})" if binary and positive_class else "predicted probability" if binary \
        else "top-label confidence"
    axis.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed frequency" if binary else "accuracy",
             title=f"Reliability on the test split ({len(reliability['bins']['calibrated']['count'])} bins)")
    axis.legend(loc="lower right", fontsize=8)
    axis.grid(alpha=0.3)
    counts.set(xlabel=what, ylabel="images")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


class Calibration(Callback):
    """The ``calibration`` section: temperature and threshold fitted on validation after fit; test diagram.

    At the end of ``fit`` (before the test of the best checkpoint), for classification tasks (those with
    ``view_logits``, see :class:`~usvl.tasks.calibrated.CalibratedClassifier`): the best checkpoint's weights are
    loaded, the validation logits collected (:func:`validation_logits`), one temperature fitted by minimising the
    validation NLL and, with two classes, a decision threshold chosen on the calibrated validation probabilities
    (:func:`~usvl.metrics.calibration.fit_calibration`); the record goes to the model and into the best checkpoint
    file, so ``usvl test`` and ``usvl predict`` use it; the weights the model had are put back. With more than two
    classes the decision stays the argmax. After ``test`` the reliability diagram of the test split is written to
    the run's log dir (``reliability.png``; a new name when one exists). Segmentation tasks get a lesion gate
    instead, when ``lesion_gate`` is on. ``usvl`` adds this callback to every run through the config's
    ``calibration`` section.

    Args:
        enabled: Fit the calibration after fit (the diagram is drawn after any test of a classifier regardless).
        threshold: ``youden`` (maximise sensitivity + specificity) or ``sensitivity`` (the highest threshold whose
            validation sensitivity reaches ``target_sensitivity``).
        target_sensitivity: The sensitivity the ``sensitivity`` method must reach, e.g. 0.9 for screening.
        diagram: Write the reliability diagram after test.
        scaling: ``temperature`` (one temperature) or ``temperature_bias`` (a temperature and a bias per class,
            :func:`~usvl.metrics.calibration.fit_temperature_and_bias`).
        lesion_gate: Segmentation tasks: choose the lesion gate (:mod:`usvl.metrics.lesion_gate`: an image keeps
            its predicted mask only if the mean probability over the mask reaches a threshold) on the validation
            split after fit, with the best checkpoint's weights, and store it in that checkpoint, so ``usvl test``
            and ``usvl predict`` apply it. A checkpoint tested or predicted with the switch on but without a
            stored gate gets one chosen on the data module's validation split first (kept in memory, logged).

    Raises:
        ValueError: Unknown ``threshold`` method or ``scaling``, or ``target_sensitivity`` outside (0, 1].
    """

    def __init__(self, enabled: bool = True, threshold: Literal["youden", "sensitivity"] = "youden",
                 target_sensitivity: float = 0.9, diagram: bool = True,
                 scaling: Literal["temperature", "temperature_bias"] = "temperature",
                 lesion_gate: bool = False) -> None:
        if scaling not in SCALINGS:
            raise ValueError(f"calibration.scaling must be one of {list(SCALINGS)}, got {scaling!r}")
        if threshold not in THRESHOLD_METHODS:
            raise ValueError(f"calibration.threshold must be one of {list(THRESHOLD_METHODS)}, got {threshold!r}")
        if not 0.0 < target_sensitivity <= 1.0:
            raise ValueError(f"calibration.target_sensitivity must lie in (0, 1], got {target_sensitivity}")
        self.enabled = enabled
        self.threshold = threshold
        self.target_sensitivity = target_sensitivity
        self.diagram = diagram
        self.scaling = scaling
        self.lesion_gate = lesion_gate

    @staticmethod
    def _with_best_weights(trainer: pl.Trainer, pl_module: pl.LightningModule,
                           collect: Callable[[], Any]) -> tuple[Any, str]:
        """``collect()`` run with the best checkpoint's weights loaded (put back after), and that checkpoint's path."""
        checkpoint = trainer.checkpoint_callback
        best = str(getattr(checkpoint, "best_model_path", "") or "") if checkpoint else ""
        kept: dict[str, torch.Tensor] = {}
        if best:
            weights = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
            state = pl_module.state_dict()
            kept = {key: state[key].detach().clone() for key in weights if key in state}
            pl_module.load_state_dict(weights, strict=False)
        try:
            return collect(), best
        finally:
            if kept:
                pl_module.load_state_dict(kept, strict=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fit and store the calibration (or the lesion gate) on the validation split with the best weights."""
        if trainer.fast_dev_run:
            return
        if self.lesion_gate and hasattr(pl_module, "lesion_gate"):
            inputs, best = self._with_best_weights(trainer, pl_module,
                                                   lambda: validation_gate_inputs(trainer, pl_module))
            self._set_lesion_gate(trainer, pl_module, inputs, best)
        if not self.enabled or not hasattr(pl_module, "view_logits"):
            return
        (logits, labels), best = self._with_best_weights(trainer, pl_module,
                                                         lambda: validation_logits(trainer, pl_module))
        if labels.numel() == 0:
            log.warning("Calibration skipped: no validation batches")
            return
        record = fit_calibration(logits, labels, self.threshold, self.target_sensitivity, self.scaling)
        record["checkpoint"] = Path(best).name if best else None
        pl_module.calibration = record
        if best and trainer.is_global_zero:
            store_calibration(best, record)
        trainer.strategy.barrier("usvl-calibration")
        threshold = record["threshold"]
        log.info("Calibration on %d validation images: temperature %.3f%s, threshold %s (%s); validation ECE %.4f "
                 "-> %.4f%s", record["validation_images"], record["temperature"],
                 "" if record["bias"] is None else ", class biases " + ", ".join(f"{b:+.3f}" for b in record["bias"]),
                 "argmax" if threshold is None else f"{threshold:.4f}", record["threshold_method"],
                 record["validation"]["ece_uncalibrated"], record["validation"]["ece"],
                 f"; stored in {best}" if best else " (no checkpoint to store it in)")

    def _set_lesion_gate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: list[torch.Tensor],
                         best: str) -> None:
        """Fit the lesion gate from validation ``inputs``, give it to the model and store it in ``best``, if any."""
        if not inputs:
            log.warning("Lesion gate not chosen: no validation batches")
            return
        record = fit_lesion_gate(*inputs)
        record["checkpoint"] = Path(best).name if best else None
        pl_module.lesion_gate = record
        if best and trainer.is_global_zero:
            store_calibration(best, record, key="lesion_gate")
        trainer.strategy.barrier("usvl-lesion-gate")
        chosen = record["validation"]
        log.info("Lesion gate on %d validation images: mean lesion probability >= %.4f; validation Dice %.4f -> "
                 "%.4f, false lesions on images without one %s -> %s, lesion images emptied %d%s",
                 record["validation_images"], record["threshold"], chosen["dice"], chosen["dice_gated"],
                 _rate(chosen["fp_rate_normal"]), _rate(chosen["fp_rate_normal_gated"]), chosen["lesions_gated"],
                 f"; stored in {best}" if best else " (no checkpoint to store it in)")

    def _gate_before_use(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """With the switch on, choose a lesion gate on the validation split for a checkpoint that has none."""
        if not self.lesion_gate or not hasattr(pl_module, "lesion_gate") or pl_module.lesion_gate is not None:
            return
        datamodule = trainer.datamodule
        if datamodule is None:
            raise RuntimeError("calibration.lesion_gate: the checkpoint has no lesion gate and there is no data "
                               "module to choose one on; test with the training data's config, or turn it off")
        log.info("The checkpoint has no lesion gate: choosing one on the validation split now (not stored)")
        try:
            datamodule.setup("validate")
            inputs = validation_gate_inputs(trainer, pl_module)
        except (ValueError, KeyError, FileNotFoundError) as error:
            raise RuntimeError(f"calibration.lesion_gate: the checkpoint has no lesion gate and none could be chosen "
                               f"on the validation split ({error}); test with the training data's config, or turn "
                               f"the switch off") from error
        self._set_lesion_gate(trainer, pl_module, inputs, "")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Choose a lesion gate first when the switch is on and the checkpoint has none."""
        self._gate_before_use(trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Say so when the switch is on but the checkpoint has no lesion gate (prediction has no validation split)."""
        if self.lesion_gate and getattr(pl_module, "lesion_gate", False) is None:
            log.warning("calibration.lesion_gate is on but the checkpoint has no lesion gate: predicting without one. "
                        "Choose one with `usvl test --calibration.lesion_gate true` on the training data's config, "
                        "or fit with the switch on")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the reliability diagram of the test split (classifiers only)."""
        if not self.diagram or trainer.fast_dev_run:
            return
        folder = Path(trainer.log_dir or ".")  # every rank asks: under DDP log_dir is a collective broadcast
        reliability = getattr(pl_module, "test_reliability", None)
        if not reliability or not trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        names = [str(name) for name in getattr(pl_module, "class_names", [])]
        path = save_reliability_diagram(reliability, unique_file(folder, "reliability"),
                                        names[1] if len(names) == 2 else None)
        log.info("Reliability diagram written to %s", path)


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


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
        """Print the epoch's line (validation has run by now) on rank 0.

        Every rank builds the line: reading ``callback_metrics`` syncs the ``sync_dist`` values across ranks (DDP).
        """
        if trainer.sanity_checking:
            return
        line = self.line(trainer)
        if trainer.is_global_zero:
            print(line, file=self.stream or sys.stdout, flush=True)

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
