"""``usvl predict`` from a PyTorch checkpoint against the ONNX export of the same checkpoint: images/s and agreement.

Run (about 3 minutes on an idle 2-core CPU, plus a one-step fit the first time): ``.venv/bin/python
benchmarks/predict.py [--run RUN_DIR] [--images FOLDER | --count 200] [--repeats 3] [--workers N] [--threads N]``.

1. The model: ``--run RUN_DIR``, a finished ``usvl fit`` run folder (its ``config.yaml`` and best checkpoint,
   ``last.ckpt`` only when there is no other); without it, a one-step smoke fit of ``configs/<experiment>.yaml``
   (``--experiment``, default thyroid_cls: the shipped model at 224 px) on the tiny profile, made once per usvl version
   in the usvl cache (:func:`predict_load.ensure_checkpoint`). Its quality does not matter here.
2. ``usvl export --config <run>/config.yaml --ckpt_path <ckpt> --output <tmp>/model.onnx`` (its parity check
   included), timed.
3. The images: ``--images FOLDER`` (a folder dataset, ``FOLDER/images/``), or ``--count`` generated images made once
   in the usvl cache (:func:`predict_load.ensure_images`: B-mode scenes times speckle, PNG and JPEG, grey and RGB,
   sides drawn from ``--sides``).
4. Each repeat runs both, in this process (same torch and onnxruntime threads), the order alternating between
   repeats::

       usvl predict --config <run>/config.yaml --ckpt_path <ckpt> --data usvl.data.FolderDataModule --data.root FOLDER
       usvl predict --config <run>/config.yaml --model usvl.export.OnnxModel --model.init_args.path <tmp>/model.onnx
           --data usvl.data.FolderDataModule --data.root FOLDER

   Images/s counts from the prediction's start to its end (:class:`clocks.PredictClock`: loading and decoding, the
   forward passes, the CSV and the overlays written); the wall rate adds parsing the config and loading the model.
5. Agreement: the largest absolute difference of any probability column (``p_*``) of ``predictions.csv`` between the
   two ways over all images and repeats, and the share of images whose predicted class differs.

Writes ``benchmarks/results/predict.json`` (machine, versions, command, settings, the medians and spreads of the
repeats) and prints its figure last: ``predict_onnx_over_pytorch``, the median over repeats of the ONNX images/s over
the PyTorch images/s.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clocks import PredictClock
from predict_load import PRESETS, ensure_checkpoint, ensure_images
from record import REPO, machine, print_figure, run_in_process, summary, write_record

from usvl.cli import main as usvl_main
from usvl.paths import cache_dir
from usvl.utils.threads import configure_threads

SIDES = (200, 600)
"""Default range of the generated images' widths and heights (px)."""


@dataclass(frozen=True)
class PredictRun:
    """One ``usvl predict`` run: images predicted, seconds of the prediction and of the whole command, its CSV."""

    images: int
    seconds: float
    wall_seconds: float
    csv: Path

    @property
    def images_per_s(self) -> float:
        """Images over the prediction's seconds."""
        return self.images / self.seconds

    @property
    def wall_images_per_s(self) -> float:
        """Images over the whole command's seconds."""
        return self.images / self.wall_seconds


def best_checkpoint(run: Path) -> Path:
    """The run's best checkpoint: any ``checkpoints/*.ckpt`` but ``last.ckpt``, which is taken only when alone.

    Raises:
        FileNotFoundError: The run has no checkpoint.
    """
    checkpoints = sorted((run / "checkpoints").glob("*.ckpt"), key=lambda path: (path.name == "last.ckpt", path.name))
    if not checkpoints:
        raise FileNotFoundError(f"No checkpoints/*.ckpt in {run}: pass a finished usvl fit run")
    return checkpoints[0]


def usvl(*args: str) -> None:
    """Run the ``usvl`` command in this process.

    Raises:
        RuntimeError: It returned a non-zero exit code.
    """
    code = usvl_main(list(args))
    if code:
        raise RuntimeError(f"usvl {' '.join(args)} exited with {code}")


def export(config: Path, checkpoint: Path, target: Path) -> float:
    """``usvl export`` of the checkpoint to ``target`` (the parity check included); its seconds."""
    start = time.perf_counter()
    usvl("export", "--config", str(config), "--ckpt_path", str(checkpoint), "--output", str(target))
    return time.perf_counter() - start


def predict(config: Path, model: list[str], folder: Path, out: Path, data: list[str]) -> PredictRun:
    """``usvl predict`` of the folder dataset with the model arguments, timed by :class:`clocks.PredictClock`."""
    start = time.perf_counter()
    usvl("predict", "--config", str(config), *model, "--data", "usvl.data.FolderDataModule", "--data.root",
         str(folder), *data, "--trainer.logger.init_args.save_dir", str(out),
         "--trainer.callbacks+=clocks.PredictClock")
    wall = time.perf_counter() - start
    clock = PredictClock.latest
    (table,) = out.rglob("predictions.csv")
    return PredictRun(clock.images, clock.seconds, wall, table)


def read_rows(table: Path) -> dict[str, dict[str, str]]:
    """The rows of a ``predictions.csv`` by image name."""
    with table.open(newline="", encoding="utf-8") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


def agreement(reference: Path, other: Path) -> dict[str, Any]:
    """How two ``predictions.csv`` agree: the largest absolute probability difference and the predictions changed.

    Raises:
        ValueError: The two tables do not hold the same images.
    """
    first, second = read_rows(reference), read_rows(other)
    if sorted(first) != sorted(second):
        raise ValueError(f"{reference} and {other} hold different images")
    columns = [column for column in next(iter(first.values())) if column.startswith("p_")]
    largest = max(abs(float(first[name][column]) - float(second[name][column]))
                  for name in first for column in columns)
    changed = sum(first[name].get("prediction") != second[name].get("prediction") for name in first)
    return {"images": len(first), "probability_columns": columns, "max_abs_probability_difference": largest,
            "predictions_changed": changed}


def compare(config: Path, checkpoint: Path, onnx: Path, folder: Path, repeats: int, work: Path,
            data: list[str] | None = None) -> dict[str, Any]:
    """Run ``usvl predict`` with the checkpoint and with the ONNX file ``repeats`` times each, interleaved.

    Args:
        config: The run's ``config.yaml``.
        checkpoint: The checkpoint (``--ckpt_path``).
        onnx: Its export (``--model usvl.export.OnnxModel``).
        folder: The folder dataset (``--data.root``).
        repeats: Runs of each way; the order alternates (PyTorch first in even repeats).
        work: A folder for the runs' outputs.
        data: More ``--data.*`` arguments (e.g. the loader workers).

    Returns:
        ``images_per_s`` and ``wall_images_per_s`` (summaries per way), ``ratio`` (ONNX over PyTorch, a summary of
        the repeats' ratios), ``agreement`` (:func:`agreement`, the worst over repeats) and ``images``.
    """
    ways = {"pytorch": ["--ckpt_path", str(checkpoint)],
            "onnx": ["--model", "usvl.export.OnnxModel", "--model.init_args.path", str(onnx)]}
    runs: dict[str, list[PredictRun]] = {way: [] for way in ways}
    for repeat in range(repeats):
        for way in (list(ways) if repeat % 2 == 0 else list(reversed(ways))):
            runs[way].append(predict(config, ways[way], folder, work / f"{way}{repeat}", data or []))
            print(f"repeat {repeat + 1}/{repeats} {way}: {runs[way][-1].images_per_s:.2f} images/s", flush=True)
    checks = [agreement(torch_run.csv, onnx_run.csv) for torch_run, onnx_run in zip(*runs.values(), strict=True)]
    ratios = [o.images_per_s / p.images_per_s for p, o in zip(runs["pytorch"], runs["onnx"], strict=True)]
    return {"images": runs["pytorch"][0].images,
            "images_per_s": {way: summary([run.images_per_s for run in done]) for way, done in runs.items()},
            "wall_images_per_s": {way: summary([run.wall_images_per_s for run in done]) for way, done in runs.items()},
            "ratio": summary(ratios, digits=4),
            "agreement": max(checks, key=lambda check: check["max_abs_probability_difference"])}


def model_and_images(options: argparse.Namespace, cache: Path) -> tuple[Path, Path, Path]:
    """The run config, checkpoint and folder dataset the options name, or those made (once) in ``cache``."""
    if options.run:
        config, checkpoint = options.run / "config.yaml", best_checkpoint(options.run)
    else:
        offline = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        config, checkpoint, _ = ensure_checkpoint(cache, options.experiment, offline)
    sides = (options.sides[0], options.sides[1])
    folder = options.images or ensure_images(cache, options.count, 0, PRESETS[options.experiment], sides)
    return config, checkpoint, folder


def parse_options() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a finished usvl fit run folder (default: a smoke fit)")
    parser.add_argument("--experiment", choices=sorted(PRESETS), default="thyroid_cls",
                        help="the smoke fit's experiment without --run, and the generated images' preset")
    parser.add_argument("--images", type=Path, default=None, help="a folder dataset (FOLDER/images/) to predict")
    parser.add_argument("--count", type=int, default=200, help="generated images without --images")
    parser.add_argument("--sides", type=int, nargs=2, default=list(SIDES), metavar=("MIN", "MAX"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="--data.num_workers (default: the data module's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: USVL_THREADS or cores)")
    parser.add_argument("--cache", type=Path, default=cache_dir() / "benchmarks" / "predict")
    parser.add_argument("--output", type=Path, default=None, help="default benchmarks/results/predict.json")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. the machine's load)")
    return parser.parse_args()


def main() -> None:
    options = parse_options()
    os.chdir(REPO)
    threads = configure_threads(options.threads)
    run_in_process(threads)
    config, checkpoint, folder = model_and_images(options, options.cache)
    data = [] if options.workers is None else ["--data.num_workers", str(options.workers)]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="usvl-predict-bench-") as tmp:
        onnx = Path(tmp) / "model.onnx"
        export_seconds = export(config, checkpoint, onnx)
        onnx_mib = onnx.stat().st_size / 2**20
        result = compare(config, checkpoint, onnx, folder, options.repeats, Path(tmp), data)
    ratio = statistics.median(result["ratio"]["runs"])
    record = {
        "figure": {"name": "predict_onnx_over_pytorch", "value": round(ratio, 4),
                   "meaning": "usvl predict images/s with the ONNX export over that with the PyTorch checkpoint "
                              "(median over repeats of each repeat's ratio)"},
        "settings": {"config": str(config), "checkpoint": str(checkpoint), "images": str(folder),
                     "repeats": options.repeats, "threads": threads, "workers": options.workers,
                     "export_seconds": round(export_seconds, 1), "onnx_mib": round(onnx_mib, 1)},
        "machine": machine(load_before),
        **result,
        "note": options.note,
    }
    write_record("predict", record, options.output)
    check = result["agreement"]
    print(f"pytorch {result['images_per_s']['pytorch']['median']:.2f} images/s, onnx "
          f"{result['images_per_s']['onnx']['median']:.2f} images/s ({result['images']} images, medians of "
          f"{options.repeats}); max abs probability difference {check['max_abs_probability_difference']:.2e}, "
          f"{check['predictions_changed']} predictions changed")
    print_figure("predict_onnx_over_pytorch", ratio)


if __name__ == "__main__":
    main()
