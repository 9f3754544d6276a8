"""Data pipeline against the model step: does loading ever hold training up on the embedded default?

Run (about 1-2 minutes on an idle 2-core CPU): ``.venv/bin/python benchmarks/data.py [--repeats 3]
[--profile default] [--steps 5] [--threads N] [--config configs/thyroid_cls.yaml]``.

Model and data module are built from the config as ``usvl fit`` builds them (:func:`plain_loop.build`). On the
training split it times, ``--repeats`` times each:

* ``decode``: building the split's dataset with no disk cache, as the data module does on a first run (decode and
  resize every PNG, the data module's decoding threads);
* ``cache_read``: building it from a warm decoded-image cache (a temporary folder);
* ``loader_augment``: one epoch of the data module's training loader (collate) with its batched augmentation;
* ``model_step``: training steps of the config's model (forward, loss, backward, optimizer, scheduler; no data
  loading) on augmented batches of the configured batch size, after one warm-up step.

A first epoch pays decoding once per image and then collation and augmentation, so the pipeline's images/s is
``1 / (1/decode + 1/loader_augment)`` on a first run, ``1 / (1/cache_read + 1/loader_augment)`` on later runs and
``loader_augment`` in later epochs. The figure, printed last, is the slowest of the three (the first run's) over the
model step's images/s (the issue's bar: at least 5). Results: ``benchmarks/results/data.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from clocks import now
from plain_loop import PlainTrainer, build
from record import REPO, machine, print_figure, run_in_process, summary, timed, write_record

from usvl.data.dataset import UltrasoundDataset
from usvl.utils.threads import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/thyroid_cls.yaml")
    parser.add_argument("--profile", default="default", help="synthetic data profile (default: 1000 training images)")
    parser.add_argument("--steps", type=int, default=5, help="timed model steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: USVL_THREADS or cores)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. the machine's load)")
    options = parser.parse_args()
    os.chdir(REPO)
    threads = configure_threads(options.threads)
    run_in_process(threads)
    load_before = os.getloadavg()
    config_args = ["--config", options.config, "--data.init_args.profile", options.profile]
    model, datamodule, device = build(config_args)
    rows = datamodule.manifest[datamodule.manifest["split"] == "train"].reset_index(drop=True)

    def dataset(cache) -> UltrasoundDataset:
        return UltrasoundDataset(rows, datamodule.image_size, with_masks=datamodule.task == "segmentation",
                                 on_bad_file=datamodule.on_bad_file, cache=cache)

    rates = {"decode": timed(lambda: len(dataset(False)), options.repeats)}
    with tempfile.TemporaryDirectory(prefix="usvl-decoded-") as folder:
        dataset(folder)
        rates["cache_read"] = timed(lambda: len(dataset(folder)), options.repeats)
    trainer = PlainTrainer(model, datamodule, device, total_steps=options.repeats * (options.steps + 1))

    def loader_epoch() -> int:
        count = 0
        for batch in datamodule.train_dataloader():
            images, _ = trainer.prepare(batch)
            count += len(images)
        return count

    loader_epoch()
    rates["loader_augment"] = timed(loader_epoch, options.repeats)
    batches: list[tuple] = []
    while len(batches) < options.steps + 1:  # as many loader epochs as it takes
        for batch in datamodule.train_dataloader():
            batches.append(trainer.prepare(batch))
            if len(batches) == options.steps + 1:
                break

    def model_steps() -> int:
        trainer.step(*batches[0])  # warm-up, untimed
        start = now(model)
        for images, labels in batches[1:]:
            trainer.step(images, labels)
        seconds = now(model) - start
        return sum(len(labels) for _, labels in batches[1:]) / seconds

    rates["model_step"] = [model_steps() for _ in range(options.repeats)]
    medians = {name: statistics.median(values) for name, values in rates.items()}
    pipeline = {
        "first_run": 1 / (1 / medians["decode"] + 1 / medians["loader_augment"]),
        "later_runs": 1 / (1 / medians["cache_read"] + 1 / medians["loader_augment"]),
        "later_epochs": medians["loader_augment"],
    }
    ratios = {case: value / medians["model_step"] for case, value in pipeline.items()}
    figure = min(ratios.values())
    record = {
        "figure": {"name": "data_over_model_step", "value": round(figure, 2),
                   "meaning": "the pipeline's images/s on a first run (decode + collate + augment) over the model "
                              "step's; bar >= 5"},
        "settings": {"config": options.config, "profile": options.profile, "split": "train", "images": len(rows),
                     "image_size": datamodule.image_size, "batch_size": datamodule.batch_size,
                     "num_workers": datamodule.num_workers, "augment": type(datamodule.augment).__name__,
                     "steps": options.steps, "repeats": options.repeats, "threads": threads, "device": str(device)},
        "machine": machine(load_before),
        "images_per_s": {name: summary(values, digits=1) for name, values in rates.items()},
        "pipeline_images_per_s": {case: round(value, 1) for case, value in pipeline.items()},
        "pipeline_over_model_step": {case: round(value, 2) for case, value in ratios.items()},
        "note": options.note,
    }
    write_record("data", record, options.output)
    for name, values in record["images_per_s"].items():
        print(f"{name}: median {values['median']} images/s (min {values['min']}, max {values['max']})")
    print("pipeline over model step: " + ", ".join(f"{case} {value:.1f}x" for case, value in ratios.items()))
    print_figure("data_over_model_step", figure)


if __name__ == "__main__":
    main()
