"""Framework overhead: ``usvl fit`` (the real CLI path) against a plain PyTorch loop on the same model and data.

Run (about 5 minutes on an idle 2-core CPU): ``.venv/bin/python benchmarks/overhead.py [--repeats 5] [--epochs 3]
[--profile small] [--threads N] [--config configs/thyroid_cls.yaml]``.

Each repeat runs both sides in this process (same threads, same allocator setting), ``usvl`` first in even repeats
and the plain loop first in odd ones, so a drift of the machine's speed over time does not favour one side:

* ``usvl fit --config <config> --data.init_args.profile <profile> --trainer.max_epochs <epochs>`` through the
  console script's entry point (:func:`usvl.cli.main`), as the ``usvl`` command runs it: TensorBoard logging,
  ``ModelCheckpoint`` (best and last), the learning-rate monitor, the prediction writer, validation every epoch, the
  test of the best checkpoint after fit. One added callback (:class:`clocks.StepClock`) reads the clock at the first
  step's start and the last step's end of every training epoch.
* a plain loop (:class:`plain_loop.PlainTrainer`) on a model and data module built from the same arguments: the same
  training loader (batch size, shuffling, workers), augmentation, forward, loss, backward, optimizer and scheduler,
  timed over the same window of every epoch.

Epoch 1 of each side is warm-up (first-use costs of the kernels) and is left out; the images/s of each run is that of
epochs 2 onwards. The figure, printed last, is the median over repeats of ``usvl images/s / plain images/s`` (the
issue's bar: at least 0.95). Results: ``benchmarks/results/overhead.json``. Run outputs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from clocks import StepClock
from plain_loop import PlainTrainer, build
from record import REPO, machine, print_figure, run_in_process, summary, write_record

from usvl.cli import main as main_entry
from usvl.utils.threads import configure_threads


def usvl_fit(config_args: list[str], folder: Path) -> list[tuple[int, float]]:
    """Run ``usvl fit`` with a :class:`StepClock`; ``(images, seconds)`` of each training epoch."""
    main_entry(["fit", *config_args, "--trainer.logger.init_args.save_dir", str(folder),
                "--trainer.callbacks+=clocks.StepClock"])
    return StepClock.latest.epochs


def plain_fit(config_args: list[str], epochs: int) -> list[tuple[int, float]]:
    """Train the same model on the same data with :class:`PlainTrainer`; ``(images, seconds)`` of each epoch."""
    model, datamodule, device = build(config_args)
    trainer = PlainTrainer(model, datamodule, device, total_steps=epochs * len(datamodule.train_dataloader()))
    return [trainer.epoch() for _ in range(epochs)]


def rate(epochs: list[tuple[int, float]]) -> float:
    """Images/s over the epochs after the first."""
    steady = epochs[1:]
    return sum(images for images, _ in steady) / sum(seconds for _, seconds in steady)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/thyroid_cls.yaml")
    parser.add_argument("--profile", default="small", help="synthetic data profile (small: 300 training images)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: USVL_THREADS or cores)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. the machine's load)")
    options = parser.parse_args()
    if options.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is warm-up)")
    os.chdir(REPO)
    threads = configure_threads(options.threads)
    run_in_process(threads)
    load_before = os.getloadavg()
    config_args = ["--config", options.config, "--data.init_args.profile", options.profile,
                   "--trainer.max_epochs", str(options.epochs)]
    runs = {"usvl": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="usvl-overhead-") as folder:
        for repeat in range(options.repeats):
            if repeat % 2:
                plain_epochs = plain_fit(config_args, options.epochs)
                usvl_epochs = usvl_fit(config_args, Path(folder) / f"repeat{repeat}")
            else:
                usvl_epochs = usvl_fit(config_args, Path(folder) / f"repeat{repeat}")
                plain_epochs = plain_fit(config_args, options.epochs)
            runs["usvl"].append(usvl_epochs)
            runs["plain"].append(plain_epochs)
            print(f"repeat {repeat + 1}/{options.repeats}: usvl {rate(usvl_epochs):.2f} images/s, plain "
                  f"{rate(plain_epochs):.2f} images/s", flush=True)
    usvl_rates = [rate(epochs) for epochs in runs["usvl"]]
    plain_rates = [rate(epochs) for epochs in runs["plain"]]
    ratios = [u / p for u, p in zip(usvl_rates, plain_rates, strict=True)]
    ratio = statistics.median(ratios)
    record = {
        "figure": {"name": "overhead_ratio", "value": round(ratio, 4),
                   "meaning": "usvl fit images/s over the plain loop's (median over repeats); bar >= 0.95"},
        "settings": {"config": options.config, "profile": options.profile, "epochs": options.epochs,
                     "warm_up_epochs": 1, "repeats": options.repeats, "threads": threads,
                     "usvl_args": ["fit", *config_args]},
        "machine": machine(load_before),
        "images_per_s": {"usvl": summary(usvl_rates), "plain": summary(plain_rates)},
        "ratio": summary(ratios, digits=4),
        "epochs": {side: [[[images, round(seconds, 3)] for images, seconds in epochs] for epochs in repeats]
                   for side, repeats in runs.items()},
        "note": options.note,
    }
    write_record("overhead", record, options.output)
    print(f"usvl {record['images_per_s']['usvl']['median']:.2f} images/s, plain "
          f"{record['images_per_s']['plain']['median']:.2f} images/s (medians of {options.repeats} repeats)")
    print_figure("overhead_ratio", ratio)


if __name__ == "__main__":
    main()
