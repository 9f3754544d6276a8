"""The ``usvl`` command: LightningCLI subcommands (fit, validate, test, predict) plus ``usvl data``."""

from __future__ import annotations

import logging
import sys
import time
import warnings
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
from usvl.utils.report import format_metrics_table, peak_memory_mb, to_builtin, write_json_unique
from usvl.utils.threads import configure_threads

log = logging.getLogger("usvl")


class USVLCLI(LightningCLI):
    """LightningCLI with data -> model links and a test of the best checkpoint after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the data module's classes to the model."""
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")

    def before_fit(self) -> None:
        """Remember when training started."""
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        """Test the best checkpoint on the test split and write ``test_metrics.json`` in the run's log dir."""
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

    def after_test(self) -> None:
        """Write ``test_metrics.json`` for a standalone ``usvl test``."""
        if self.trainer.fast_dev_run:
            return
        self._report([dict(self.trainer.callback_metrics)], {"checkpoint": self.config_init.get(
            self.subcommand, {}).get("ckpt_path")})

    def _report(self, results: list[dict[str, Any]], extra: dict[str, Any]) -> None:
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
        log_dir = Path(self.trainer.log_dir or ".")
        path = write_json_unique(log_dir / "test_metrics.json", payload)
        summary = {**metrics, "trainable_params": payload["trainable_params"],
                   "peak_memory_mb": payload["peak_memory_mb"]}
        print(format_metrics_table(summary, title="test"), flush=True)
        print(f"Test metrics written to {path}", flush=True)


def run_lightning(args: ArgsType = None) -> USVLCLI:
    """Run a LightningCLI subcommand (``fit``, ``validate``, ``test``, ``predict``)."""
    return USVLCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"version": usvl.__version__},
        args=args,
    )


def main(args: ArgsType = None) -> int | None:
    """Entry point of the ``usvl`` console script; returns the exit code of ``usvl data``."""
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The frozen towers are in eval mode on purpose (fixed batch-norm statistics); Lightning warns about it.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    configure_threads()
    if argv and argv[0] == "data":
        from usvl.data.cli import data_main

        return data_main(argv[1:])
    run_lightning(args)
    return None
