"""The LightningCLI of ``usvl fit | validate | test | predict``: config links, the test after fit, run reports."""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

import usvl
import usvl.callbacks
import usvl.data
import usvl.models.adapters
import usvl.models.encoders
import usvl.models.heads
import usvl.tasks
import usvl.text  # noqa: F401  (short class names in configs)
from usvl.callbacks import OUTPUT_FORMATS, EpochSummary, SegmentationPredictionWriter, TestCaseWriter
from usvl.domain_monitor import DomainShiftMonitor
from usvl.utils.atomic import to_builtin, write_json_unique
from usvl.utils.errors import UserError
from usvl.utils.report import format_metrics_table, peak_memory_mb
from usvl.utils.resume import resume_version

log = logging.getLogger("usvl")

DESCRIPTION = (
    "usvl: adapt frozen vision-language models to ultrasound classification and segmentation. "
    "Training and evaluation: usvl fit | validate | test | predict --config CONFIG.yaml (Lightning subcommands, "
    "below). Datasets: usvl data generate | check ... (usvl data --help). Text: usvl text refine ... (LLM "
    "refinement with provenance; usvl text --help). Experiment grids: usvl reproduce --grid "
    "configs/reproduce/quick.yaml (results tables and plots; usvl reproduce --help). ONNX: usvl export --config "
    "RUN/config.yaml --ckpt_path CKPT (checked against PyTorch; usvl export --help). Browser app: usvl app "
    "--ckpt_path CKPT (needs the app extra; usvl app --help)."
)
"""Help text of the top-level ``usvl`` parser: the Lightning subcommands, ``usvl data`` and ``usvl text``."""


def console_trainer_kwargs(trainer_config: Mapping[str, Any], stream: Any = None) -> dict[str, Any]:
    """Trainer arguments for the console: with no terminal, no progress bar and one summary line per epoch.

    The progress bar is shown when ``stream`` (default: standard error, where it is drawn) is a terminal and the
    config does not turn it off. Otherwise the bar is disabled and :class:`~usvl.callbacks.EpochSummary` is added
    to the configured callbacks (unless one is there already), so redirected output still shows progress.

    Args:
        trainer_config: The instantiated ``trainer`` section of the config.
        stream: The progress bar's stream.

    Returns:
        Arguments that override the trainer config (empty when the bar is shown).
    """
    stream = sys.stderr if stream is None else stream
    if trainer_config.get("enable_progress_bar", True) is not False and stream.isatty():
        return {}
    callbacks = trainer_config.get("callbacks") or []
    callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
    if not any(isinstance(callback, EpochSummary) for callback in callbacks):
        callbacks.append(EpochSummary())
    return {"enable_progress_bar": False, "callbacks": callbacks}


@functools.lru_cache(maxsize=4)
def stored_class_names(ckpt_path: str, mtime_ns: int) -> list[str] | None:
    """The class names a usvl checkpoint stores (``checkpoint["usvl"]["class_names"]``), read once per file version.

    Args:
        ckpt_path: The checkpoint file.
        mtime_ns: Its modification time, part of the cache key so a rewritten file is read again.
    """
    import torch

    stored = torch.load(ckpt_path, map_location="cpu", weights_only=False).get("usvl", {}).get("class_names")
    return [str(name) for name in stored] if stored else None


class USVLCLI(LightningCLI):
    """LightningCLI with data -> model links and a test of the best checkpoint after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the data module's classes to the model; the text cache and the calibration as their own sections.

        ``text.descriptions`` names the class descriptions (``configs/text/``); ``calibration`` (``enabled``,
        ``threshold: youden | sensitivity``, ``target_sensitivity``, ``diagram``) sets how classifiers are calibrated
        on the validation split after fit (:class:`~usvl.callbacks.Calibration`). Both callbacks are added to the
        trainer's callbacks, so configs set them with one key and share the rest of the callback list.
        """
        parser.add_lightning_class_args(usvl.text.TextEmbeddingCache, "text")
        parser.add_lightning_class_args(usvl.callbacks.Calibration, "calibration")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        """Lightning's subcommand parser; ``predict`` also takes ``--output_format`` (``--output-format``).

        ``--output_format dicom-seg`` writes the masks of DICOM inputs as DICOM Segmentations (see
        :class:`~usvl.callbacks.SegmentationPredictionWriter`); the default, ``png``, keeps each writer's setting.
        """
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_argument("--output_format", "--output-format", type=str, default=None,
                                choices=[None, *OUTPUT_FORMATS],
                                help="Mask format of segmentation predictions: png, or dicom-seg (DICOM Segmentation "
                                     'objects for DICOM inputs; pip install "usvl[dicom]")')
        return parser

    def _apply_output_format(self) -> None:
        """Set ``predict --output_format`` on the segmentation prediction writers.

        Raises:
            UserError: A format is given but the trainer has no segmentation prediction writer (a classifier).
        """
        output_format = self.config.get("predict", {}).get("output_format")
        if not output_format:
            return
        writers = [c for c in self.trainer.callbacks if isinstance(c, SegmentationPredictionWriter)]
        if not writers:
            raise UserError(f"--output_format {output_format} sets the mask format of segmentation predictions, but "
                            "this model has no SegmentationPredictionWriter (is it a segmentation run?)")
        for writer in writers:
            writer.output_format = output_format

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Build the trainer with a test-case writer and a domain-shift monitor.

        :class:`~usvl.callbacks.TestCaseWriter` writes the per-image test results;
        :class:`~usvl.domain_monitor.DomainShiftMonitor` stores the training-domain statistics and reports
        ``test/ood_fraction``. Without a terminal, with one summary line per epoch instead of a progress bar.
        """
        config = self._get(self.config_init, "trainer", default={}) or {}
        overrides = console_trainer_kwargs(config)
        callbacks = overrides.get("callbacks", config.get("callbacks")) or []
        callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
        if not any(isinstance(callback, TestCaseWriter) for callback in callbacks):
            callbacks.append(TestCaseWriter())
        if not any(isinstance(callback, DomainShiftMonitor) for callback in callbacks):
            callbacks.append(DomainShiftMonitor())
        return super().instantiate_trainer(**{**overrides, "callbacks": callbacks, **kwargs})

    def before_fit(self) -> None:
        """Remember when training started."""
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        """Test the best checkpoint on the test split and write ``test_metrics.json`` in the run's log dir.

        The report holds the metrics, parameter counts, peak memory, the checkpoint and, with a usvl data module,
        ``skipped_files``: how many images ``on_bad_file="skip"`` left out (listed in ``skipped_files.csv``).
        """
        trainer = self.trainer
        if trainer.fast_dev_run or trainer.interrupted:
            return
        fit_seconds = time.perf_counter() - getattr(self, "_fit_started", time.perf_counter())
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") if checkpoint else ""
        results = trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
        extra = {"checkpoint": best or None, "fit_seconds": round(fit_seconds, 1),
                 "best_val_score": to_builtin(getattr(checkpoint, "best_model_score", None))}
        self._report(results, extra)

    def before_instantiate_classes(self) -> None:
        """Continue a resumed ``fit`` in its run folder; build ``predict``'s data module with the checkpoint's classes.

        ``fit --ckpt_path last`` (or a checkpoint file of the run, ``<save_dir>/<name>/version_N/checkpoints/``)
        pins the logger to that ``version_N``, so Lightning finds its ``last.ckpt``, the resumed run writes into the
        same folder and the checkpoint callback keeps the best score of the epochs before the interruption (see
        :mod:`usvl.utils.resume`). Without any ``last.ckpt`` yet, ``--ckpt_path last`` starts a new run, so a
        requeued job can always pass it.

        Prediction reads no labels, so the classes trained on hold whatever the data config says (e.g. the
        three breast classes when a folder module's default is two).
        """
        if self.subcommand == "fit":
            self._continue_resumed_run()
        if self.subcommand != "predict":
            return
        stored = self._checkpoint_class_names()
        data = self.config.get("predict", {}).get("data")
        init_args = data.get("init_args") if data is not None and hasattr(data, "get") else None
        if stored and init_args is not None and "class_names" in init_args:
            init_args["class_names"] = list(stored)

    def _continue_resumed_run(self) -> None:
        config = self.config.fit
        ckpt_path = config.get("ckpt_path")
        logger = config.get("trainer.logger")
        init_args = logger.get("init_args") if logger is not None and hasattr(logger, "get") else None
        if not ckpt_path or init_args is None or "save_dir" not in init_args or init_args.get("version") is not None:
            return
        run_root = Path(str(init_args.get("save_dir") or ".")) / str(init_args.get("name") or "")
        found = resume_version(run_root, str(ckpt_path))
        if found is None:
            if ckpt_path == "last":
                log.info("No last.ckpt under %s: --ckpt_path last starts a new run", run_root)
            return
        version, file = found
        if version is not None:
            init_args["version"] = version
            log.info("Resuming %s in %s", file, run_root / f"version_{version}")

    def before_test(self) -> None:
        """Take the class names stored in the checkpoint, so a test set's labels map to the classes trained on."""
        self._use_checkpoint_classes()

    def before_predict(self) -> None:
        """Take the checkpoint's class names (predictions are named by them) and apply ``--output_format``."""
        self._use_checkpoint_classes()
        self._apply_output_format()

    def predict(self, **kwargs: Any) -> Any:
        """``trainer.predict`` keeping no predictions in memory unless ``--return_predictions true`` is given.

        The prediction writers write every batch as it comes, so memory stays flat over any number of images.
        """
        kwargs["return_predictions"] = bool(kwargs.get("return_predictions"))
        return self.trainer.predict(**kwargs)

    def _ckpt_path(self) -> str | None:
        """The subcommand's ``ckpt_path`` (before or after instantiation)."""
        config = self.config_init if hasattr(self, "config_init") else self.config
        return config.get(self.subcommand, {}).get("ckpt_path")

    def _checkpoint_class_names(self) -> list[str] | None:
        """The class names stored in the subcommand's ``ckpt_path`` (None without a checkpoint file or names)."""
        ckpt_path = self._ckpt_path()
        if not ckpt_path or not Path(str(ckpt_path)).is_file():
            return None
        return stored_class_names(str(ckpt_path), Path(str(ckpt_path)).stat().st_mtime_ns)

    def _use_checkpoint_classes(self) -> None:
        stored = self._checkpoint_class_names()
        if stored and hasattr(self.datamodule, "use_class_names"):
            self.datamodule.use_class_names(stored, f"checkpoint {self._ckpt_path()}")
            if list(getattr(self.model, "class_names", stored)) != list(stored):
                self.model.set_classes(len(stored), stored)

    def after_test(self) -> None:
        """Write ``test_metrics.json`` for a standalone ``usvl test``."""
        if self.trainer.fast_dev_run:
            return
        self._report([dict(self.trainer.callback_metrics)], {"checkpoint": self._ckpt_path()})

    def _report(self, results: list[dict[str, Any]], extra: dict[str, Any]) -> None:
        log_dir = Path(self.trainer.log_dir or ".")  # every rank must ask (it broadcasts)
        if not self.trainer.is_global_zero:  # with DDP the metrics are synced: rank 0 writes them once
            return
        metrics = {k: v for k, v in to_builtin(results[0] if results else {}).items() if k.startswith("test/")}
        payload = {
            "metrics": metrics,
            **self.model.parameter_counts(),
            "peak_memory_mb": round(peak_memory_mb(), 1),
            "encoder": self.model.encoder.encoder_id,
            "class_names": list(getattr(self.model, "class_names", [])),
            "usvl_version": usvl.__version__,
            **extra,
        }
        skip_list = getattr(self.datamodule, "skip_list", None)
        if skip_list is not None:
            payload["skipped_files"] = len(skip_list)  # listed in the run folder's skipped_files.csv
        calibration = getattr(self.model, "calibration", None)
        if calibration:
            payload["calibration"] = dict(calibration)
        path = write_json_unique(log_dir / "test_metrics.json", payload)
        summary = {**metrics, "trainable_params": payload["trainable_params"],
                   "peak_memory_mb": payload["peak_memory_mb"]}
        print(format_metrics_table(summary, title="test"), flush=True)
        print(f"Test metrics written to {path}", flush=True)


OUT_OF_MEMORY_ADVICE = (
    "Out of GPU memory. Lower the batch size (--data.init_args.batch_size; --data.init_args.eval_batch_size for "
    "validation, test and predict), train in mixed precision (--trainer.precision bf16-mixed, or 16-mixed on GPUs "
    "without bfloat16) or lower the image size (--data.init_args.image_size); --trainer.accumulate_grad_batches N "
    "keeps the effective batch size at N times the batch size."
)
"""What a GPU out-of-memory error adds: the switches that lower memory."""


def run_lightning(args: ArgsType = None, cli_class: type[USVLCLI] | None = None, **kwargs: Any) -> USVLCLI:
    """Run a LightningCLI subcommand (``fit``, ``validate``, ``test``, ``predict``).

    Args:
        args: The command line after ``usvl`` (None: ``sys.argv``).
        cli_class: The CLI class, :class:`USVLCLI` (None) or a subclass (``usvl app`` keeps its ``predict`` ready).
        **kwargs: Further :class:`~lightning.pytorch.cli.LightningCLI` arguments, e.g. ``save_config_callback=None``.

    Raises:
        torch.OutOfMemoryError: The GPU ran out of memory; the message starts with :data:`OUT_OF_MEMORY_ADVICE`.
    """
    import torch

    settings: dict[str, Any] = {
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "seed_everything_default": 0,
        "save_config_kwargs": {"overwrite": True},
        "parser_kwargs": {"version": usvl.__version__, "description": DESCRIPTION},
    }
    try:
        return (cli_class or USVLCLI)(LightningModule, LightningDataModule, **{**settings, **kwargs}, args=args)
    except torch.OutOfMemoryError as error:
        raise torch.OutOfMemoryError(f"{OUT_OF_MEMORY_ADVICE}\n{error}") from error
