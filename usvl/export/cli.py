"""``usvl export``: write a trained run's model as ONNX and check it against PyTorch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from usvl.export.onnx import DEFAULT_OPSET, DEFAULT_TOLERANCE, EXPORTERS, ExportError, ParityError, export_run

PREDICT_HINT = ("Predict with it: usvl predict --config {config} --model usvl.export.OnnxModel "
                "--model.init_args.path {path} --data usvl.data.FolderDataModule --data.root FOLDER")


def build_parser() -> argparse.ArgumentParser:
    """The ``usvl export`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="usvl export",
        description="Export a trained model (frozen encoder + adapters + head, LoRA merged, class text baked in) "
                    "to ONNX with a dynamic batch axis, and check with onnxruntime that it reproduces PyTorch on "
                    "random images (max abs difference of logits / probabilities). Exit code 1 when the export or the "
                    "check fails (the file is removed), 2 on unusable input.")
    parser.add_argument("--config", required=True, help="The run's config.yaml (written by usvl fit).")
    parser.add_argument("--ckpt_path", required=True, help="The checkpoint to export (the run's checkpoints/*.ckpt).")
    parser.add_argument("--output", default=None, help="The .onnx file (default: the checkpoint path with .onnx).")
    parser.add_argument("--opset", type=int, default=None,
                        help=f"ONNX opset (default {DEFAULT_OPSET}; 18 with --exporter dynamo, its lowest).")
    parser.add_argument("--image_size", type=int, nargs="+", default=None, metavar="SIZE",
                        help="Input size, SIZE or HEIGHT WIDTH (default: the config's data.init_args.image_size).")
    parser.add_argument("--exporter", choices=EXPORTERS, default="auto",
                        help="torch.onnx back-end: auto (default: dynamo when the model computes FFTs, as Mona "
                             "freq/hybrid do, else torchscript), torchscript (dynamo=False, opset 17) or dynamo "
                             "(torch.export, opset 18, slower).")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"Largest accepted max abs difference to PyTorch (default {DEFAULT_TOLERANCE:g}).")
    parser.add_argument("--no_verify", action="store_true", help="Skip the parity check.")
    return parser


def export_main(argv: Sequence[str] | None = None) -> int:
    """Run ``usvl export``; returns the exit code (0 done, 1 parity check failed, 2 unusable input)."""
    options = build_parser().parse_args(argv)
    size = options.image_size
    if size is not None and len(size) not in (1, 2):
        print("usvl export: --image_size takes SIZE or HEIGHT WIDTH", file=sys.stderr)
        return 2
    try:
        report = export_run(options.config, options.ckpt_path, options.output,
                            image_size=None if size is None else (size * 2)[:2], opset=options.opset,
                            exporter=options.exporter, verify=not options.no_verify, tolerance=options.tolerance)
    except (ParityError, ExportError) as error:
        print(f"usvl export: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, TypeError, ImportError) as error:
        print(f"usvl export: {error}", file=sys.stderr)
        return 2
    print(report.format())
    print(PREDICT_HINT.format(config=options.config, path=report.path))
    return 0
