"""``usvl predict`` kept ready for one image at a time: the model loaded once, each request through predict's code path.

:class:`AppPredictor` builds the run's ``usvl predict`` once (the LightningCLI with the run config, the checkpoint,
a :class:`~usvl.data.FolderDataModule` and the config's prediction writers), predicts one generated image at start
(Lightning loads the checkpoint then, as ``usvl predict`` does, and the whole path is checked before the first user
comes), and then answers each uploaded file with the same ``trainer.predict``: the file is put alone in a request
folder's ``images/``, a fresh copy of the configured data module reads it, the model's ``predict_step`` runs and the
same writers write ``predictions.csv``, the mask and overlay PNGs and whatever else they write into that request
folder. :class:`AppResult` is read back from those files only, so what the app shows is what ``usvl predict`` wrote
for that image, including columns and files the writers gain later (descriptors, a lexicon sentence, per-image JSON).
Nothing here imports Gradio; :mod:`usvl.app.ui` draws the page.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

import usvl
from usvl.callbacks import PredictionWriter, SegmentationPredictionWriter
from usvl.data.sources.common import IMAGE_EXTENSIONS
from usvl.lightning_cli import USVLCLI, run_lightning
from usvl.utils.atomic import write_json_atomic
from usvl.utils.errors import UserError

log = logging.getLogger(__name__)

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
"""DICOM file extensions the app accepts; they go to ``usvl predict`` like any image (read where usvl reads DICOM)."""
UPLOAD_EXTENSIONS = frozenset(IMAGE_EXTENSIONS | DICOM_EXTENSIONS)
"""File extensions (lower case) the app accepts: the images the data layer reads, and DICOM."""
BASE_COLUMNS = frozenset({"name", "width", "height", "prediction", "threshold", "lesion_area_px", "lesion_area_mm2",
                          "mask", "overlay"})
"""``predictions.csv`` columns the page shows in their own places (with the class probability columns); any other
column (descriptors and their probabilities, points, category, frame, ...) is listed under the details."""
SENTENCE_COLUMN = re.compile(r"sentence|report", re.IGNORECASE)
"""Columns whose text is shown as the read-out sentence (e.g. a lexicon report)."""
KEPT_REQUESTS = 16
"""Request folders kept on disk; older ones are removed (the page has its own copies of the files it shows)."""


class AppInputError(UserError, ValueError):
    """The uploaded file cannot be predicted (wrong type, unreadable); the message says why and what to drop."""


def find_run_config(ckpt_path: str | Path) -> Path:
    """The ``config.yaml`` of the run a checkpoint belongs to (``<run>/config.yaml`` beside ``<run>/checkpoints/``).

    Raises:
        FileNotFoundError: The checkpoint does not exist, or no ``config.yaml`` is found beside it or one folder up.
    """
    checkpoint = Path(ckpt_path)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"Checkpoint {checkpoint} not found: pass a checkpoint of a run "
                                "(runs/<experiment>/version_N/checkpoints/*.ckpt)")
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise FileNotFoundError(f"No config.yaml beside {checkpoint} or in its parent folder: pass the run's config with "
                            "--config RUN/config.yaml")


def parse_value(text: str) -> Any:
    """A CSV cell as JSON would hold it: ``int``, ``float``, ``None`` for an empty cell, else the text."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass
class AppResult:
    """What ``usvl predict`` wrote for one uploaded file, read back from its prediction folder.

    Attributes:
        name: The uploaded file's name (the ``name`` column of its rows).
        task: ``classification`` or ``segmentation`` (from the prediction writer).
        rows: The ``predictions.csv`` rows, as written (one per image; one per frame for a cine loop).
        folder: The prediction folder (``predictions.csv``, masks, ``overlays/``, ``calibration.json``, ...).
        overlays: The overlay PNG of each row (those that exist).
        masks: The mask PNG of each row (segmentation).
        records: Every JSON file the writers wrote, parsed, by path relative to ``folder``.
        result_json: The app's JSON of the result (rows with numbers as numbers, records, model), for download.
        probability_columns: The columns holding the class probabilities (``p_<class>`` per class, or ``p_lesion``).
    """

    name: str
    task: str
    rows: list[dict[str, str]]
    folder: Path
    overlays: list[Path] = field(default_factory=list)
    masks: list[Path] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)
    result_json: Path | None = None
    probability_columns: list[str] = field(default_factory=list)

    def probabilities(self, index: int = 0) -> dict[str, float]:
        """``{class: probability}`` of row ``index`` from its class probability columns (``lesion`` for segmentation).

        Without :attr:`probability_columns`, every ``p_*`` column.
        """
        row = self.rows[index]
        columns = self.probability_columns or [key for key in row if key.startswith("p_")]
        return {key[2:]: float(row[key]) for key in columns if row.get(key)}

    def sentence(self, index: int = 0) -> str:
        """The read-out sentence of row ``index`` (a ``*sentence*`` or ``*report*`` column), or ``""``."""
        return next((value for key, value in self.rows[index].items() if SENTENCE_COLUMN.search(key) and value), "")

    def details(self, index: int = 0) -> dict[str, str]:
        """The columns of row ``index`` not shown elsewhere: descriptors, points, category, areas, frame, ..."""
        shown = {f"p_{name}" for name in self.probabilities(index)}
        return {key: value for key, value in self.rows[index].items()
                if key not in BASE_COLUMNS and key not in shown and not SENTENCE_COLUMN.search(key)}

    def downloads(self) -> list[Path]:
        """The files offered for download: the result JSON, every mask and every per-image JSON the writers wrote."""
        extra = [self.folder / path for path in self.records if path != "calibration.json"]
        return [path for path in (self.result_json, *self.masks, *extra) if path is not None]


class AppCLI(USVLCLI):
    """The ``usvl predict`` CLI of the app: runs the start-up prediction, keeps a clean copy of its data module."""

    template_datamodule: Any = None

    def predict(self, **kwargs: Any) -> Any:
        """Keep an unused copy of the data module, then predict the start-up image (loading the checkpoint).

        The start-up prediction is written under ``<default_root_dir>/start-up``.
        """
        self.template_datamodule = copy.deepcopy(self.datamodule)
        for writer in prediction_writers(self.trainer):
            writer.output_dir = str(Path(self.trainer.default_root_dir) / "start-up")
        return super().predict(**kwargs)


def prediction_writers(trainer: Any) -> list[PredictionWriter]:
    """The trainer's usvl prediction writers.

    Raises:
        ValueError: A prediction writer is not a usvl one, or there is none.
    """
    writers = [callback for callback in trainer.callbacks if isinstance(callback, BasePredictionWriter)]
    foreign = [type(writer).__name__ for writer in writers if not isinstance(writer, PredictionWriter)]
    if foreign or not writers:
        raise ValueError(f"The run config's trainer callbacks hold {'no prediction writer' if not writers else foreign}"
                         ": usvl app shows what usvl predict writes, so the config needs a usvl prediction writer "
                         "(usvl.callbacks.ClassificationPredictionWriter or SegmentationPredictionWriter)")
    return writers


class AppPredictor:
    """A run's model, loaded once, predicting uploaded files one at a time through ``usvl predict``'s code path.

    Args:
        ckpt_path: The checkpoint (a run's ``checkpoints/*.ckpt``).
        config: The run's ``config.yaml``; default: found beside the checkpoint (:func:`find_run_config`).
        workdir: Folder for the start-up and request folders; default: a new temporary folder.
        cli_args: Further ``usvl predict`` arguments, e.g. ``--trainer.accelerator cpu`` or
            ``--trainer.callbacks+=...``; the data module is always ``usvl.data.FolderDataModule``.

    Raises:
        FileNotFoundError: The checkpoint or the config is missing.
        ValueError: The config has no usvl prediction writer.
    """

    def __init__(self, ckpt_path: str | Path, config: str | Path | None = None, workdir: str | Path | None = None,
                 cli_args: tuple[str, ...] | list[str] = ()) -> None:
        self.ckpt_path = Path(ckpt_path)
        self.config = Path(config) if config is not None else find_run_config(self.ckpt_path)
        if not self.config.is_file():
            raise FileNotFoundError(f"Run config {self.config} not found")
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="usvl-app-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        warm_up = self.workdir / "start-up"
        (warm_up / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((64, 64), 64, dtype=np.uint8)).save(warm_up / "images" / "start-up.png")
        args = ["predict", "--config", str(self.config), "--ckpt_path", str(self.ckpt_path),
                "--data", "usvl.data.FolderDataModule", "--data.root", str(warm_up),
                "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                "--trainer.default_root_dir", str(self.workdir), *cli_args]
        log.info("Loading %s with %s", self.ckpt_path, self.config)
        cli = run_lightning(args, cli_class=AppCLI, save_config_callback=None)
        self.trainer = cli.trainer
        self.model = cli.model
        self.template_datamodule = cli.template_datamodule
        self.writers = prediction_writers(self.trainer)
        self.task = "segmentation" if isinstance(self.writers[0], SegmentationPredictionWriter) else "classification"
        self.class_names = [str(name) for name in getattr(self.model, "class_names", [])]
        self._requests: list[Path] = []

    def describe(self) -> dict[str, Any]:
        """The loaded model, for the page's header and the result JSON."""
        return {"checkpoint": str(self.ckpt_path), "config": str(self.config), "task": self.task,
                "class_names": self.class_names, "encoder": getattr(self.model.encoder, "encoder_id", None),
                "threshold": getattr(self.model, "decision_threshold", None) if self.task == "classification"
                else float(getattr(self.model, "threshold", 0.5)),
                "usvl_version": usvl.__version__}

    def predict(self, path: str | Path, name: str | None = None) -> AppResult:
        """Predict one file exactly as ``usvl predict`` would in a folder holding only that file.

        Args:
            path: The uploaded file.
            name: Its name as the user gave it (default: ``path``'s name); the rows and output files are named by it.

        Raises:
            AppInputError: The file's type is not accepted, or ``usvl predict`` wrote no row for it; unreadable files
                raise the data layer's :class:`~usvl.data.BadFilesError` (whose message names the file and why).
        """
        source = Path(path)
        name = safe_name(name or source.name)
        suffix = Path(name).suffix.lower()
        if suffix not in UPLOAD_EXTENSIONS:
            raise AppInputError(f"{name}: {suffix or 'no extension'} is not an image type usvl reads; drop a PNG, "
                                f"JPEG or DICOM (.dcm) file ({', '.join(sorted(UPLOAD_EXTENSIONS))})")
        if not source.is_file() or source.stat().st_size == 0:
            raise AppInputError(f"{name}: the file is empty or was not received; drop it again")
        with self._lock:
            request = Path(tempfile.mkdtemp(prefix="request-", dir=self.workdir))
            self._forget_old_requests(request)
            (request / "input" / "images").mkdir(parents=True)
            shutil.copyfile(source, request / "input" / "images" / name)
            datamodule = copy.deepcopy(self.template_datamodule)
            datamodule.root = str(request / "input")
            for writer in self.writers:
                writer.output_dir = str(request)
            self.trainer.predict(self.model, datamodule=datamodule, return_predictions=False)
            return self._read(name, Path(self.writers[0].folder), request)

    def _forget_old_requests(self, request: Path) -> None:
        self._requests.append(request)
        while len(self._requests) > KEPT_REQUESTS:
            shutil.rmtree(self._requests.pop(0), ignore_errors=True)

    def _read(self, name: str, folder: Path, request: Path) -> AppResult:
        csv_path = folder / "predictions.csv"
        rows: list[dict[str, str]] = []
        if csv_path.is_file():
            with csv_path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        if not rows:
            raise AppInputError(f"{name}: usvl predict read no image from it; check that it is an ultrasound image "
                                "file of a type this usvl reads")
        records = {path.relative_to(folder).as_posix(): json.loads(path.read_text(encoding="utf-8"))
                   for path in sorted(folder.rglob("*.json"))}
        columns = ["p_lesion"] if self.task == "segmentation" else [f"p_{label}" for label in self.class_names]
        result = AppResult(name=name, task=self.task, rows=rows, folder=folder, records=records,
                           probability_columns=columns)
        if any(row.get("overlay") for row in rows):
            result.overlays = [folder / row["overlay"] for row in rows if row.get("overlay")]
        else:  # the file's overlays (one per frame of a cine loop), in the rows' order
            result.overlays = sorted((folder / "overlays").glob("*.png"))
        result.overlays = [path for path in result.overlays if path.is_file()]
        result.masks = [folder / row["mask"] for row in rows if row.get("mask") and (folder / row["mask"]).is_file()]
        payload = {"file": name, "model": self.describe(),
                   "predictions": [{key: parse_value(value) for key, value in row.items()} for row in rows],
                   "records": records}
        download = request / "download"
        download.mkdir()
        result.result_json = write_json_atomic(download / f"{Path(name).stem}-result.json", payload)
        return result


def safe_name(name: str) -> str:
    """The file name without folders or characters a file system or a URL would trip on."""
    base = Path(str(name).replace("\\", "/")).name.strip()
    cleaned = re.sub(r"[^\w.\- ]+", "_", base).strip(". ")
    return cleaned or "upload"
