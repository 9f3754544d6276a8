"""``usvl app``: serve a trained run's predictions in the browser (Gradio, on this machine only by default)."""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from collections.abc import Sequence

log = logging.getLogger(__name__)

INSTALL_HINT = 'usvl app needs Gradio: pip install -e ".[app]" (or make install, whose dev extra has it)'


def build_parser() -> argparse.ArgumentParser:
    """The ``usvl app`` argument parser; arguments it does not know go on to ``usvl predict``."""
    parser = argparse.ArgumentParser(
        prog="usvl app",
        description="A browser page for a trained run: drop a PNG, JPEG or DICOM image and see what usvl predict "
                    "gives for it (mask overlay or predicted class, calibrated probabilities at the stored threshold, "
                    "any descriptors and read-out sentence), and download the mask and a JSON of the result. The "
                    "model is loaded once; each image goes through usvl predict's own code path. Further arguments "
                    "(e.g. --trainer.accelerator cpu) go to usvl predict.")
    parser.add_argument("--ckpt_path", required=True, help="The checkpoint (a run's checkpoints/*.ckpt).")
    parser.add_argument("--config", default=None,
                        help="The run's config.yaml (default: the one beside the checkpoint's folder).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 serves the "
                             "network, without any login).")
    parser.add_argument("--port", type=int, default=7860, help="Port (default 7860; 0: a free one).")
    return parser


def app_main(argv: Sequence[str] | None = None) -> int:
    """Run ``usvl app`` until interrupted; returns the exit code (2 when Gradio is missing)."""
    options, predict_args = build_parser().parse_known_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(f"usvl app: {INSTALL_HINT}")
        return 2
    from usvl.app.predictor import AppPredictor
    from usvl.app.ui import serve

    # The app hands LightningCLI its own ``usvl predict`` arguments while sys.argv holds those of ``usvl app``.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")

    predictor = AppPredictor(options.ckpt_path, options.config, cli_args=predict_args)
    serve(predictor, host=options.host, port=options.port, block=True)
    return 0
