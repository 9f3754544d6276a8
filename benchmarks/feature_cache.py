"""Frozen-feature cache: epoch times of head-only training and zero-shot testing with and without it, same metrics.

Run (about 3-4 minutes on an idle 2-core CPU): ``.venv/bin/python benchmarks/feature_cache.py [--repeats 3]
[--epochs 3] [--profile small] [--threads N]``.

Two head-only workloads on the embedded thyroid data, each run through the console script's entry point
(:func:`usvl.cli.main`) as the ``usvl`` command runs it, with ``--model.init_args.feature_cache false`` and ``true``
(same seed):

* linear probe: ``usvl fit --config configs/thyroid_cls.yaml --model.init_args.adapter null
  --data.init_args.augment null`` (projections and head train on the frozen towers; the augmentation is off, as the
  cache requires), ``--epochs`` epochs, then the CLI's test of the best checkpoint. Epoch time: a whole training
  epoch with its validation and checkpointing (:class:`clocks.EpochClock`). Epoch 1 of a cached run encodes the
  images (as an uncached epoch does) unless an earlier repeat left the tables on disk; the figure compares epochs
  2 onwards.
* zero-shot: ``usvl test --config configs/zeroshot/thyroid.yaml``. Epoch time: the test epoch. The first cached run
  encodes and writes the tables (reported as ``cold``); the figure compares the later, warm ones.

The feature cache starts empty: ``USVL_CACHE`` points to a temporary folder holding links to everything in the real
cache except ``features`` (generated data, decoded images and text embeddings are reused). The figure, printed last,
is the smaller of the two speedups (median epoch time without the cache over with it; the issue's bar: at least 10).
The test metrics of the runs with and without the cache are compared (``metrics``: the largest absolute difference).
Results: ``benchmarks/results/feature_cache.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clocks import EpochClock
from record import REPO, machine, print_figure, run_in_process, summary, write_record

from usvl.cli import main as main_entry
from usvl.paths import cache_dir
from usvl.utils.threads import configure_threads

REUSED = ("data", "decoded", "text")
"""Cache folders the benchmark reuses; ``features`` starts empty."""

WORKLOADS = {"linear_probe": "probe", "zero_shot": "zeroshot"}
"""The two workloads and the prefix of their runs."""


@contextlib.contextmanager
def empty_feature_cache() -> Iterator[Path]:
    """Point ``USVL_CACHE`` at a temporary folder linking the real cache's other folders; yields the folder."""
    real = cache_dir()
    previous = os.environ.get("USVL_CACHE")
    with tempfile.TemporaryDirectory(prefix="usvl-feature-bench-") as folder:
        for name in REUSED:
            (real / name).mkdir(parents=True, exist_ok=True)
            (Path(folder) / name).symlink_to(real / name, target_is_directory=True)
        os.environ["USVL_CACHE"] = folder
        try:
            yield Path(folder)
        finally:
            if previous is None:
                os.environ.pop("USVL_CACHE", None)
            else:
                os.environ["USVL_CACHE"] = previous


def run(subcommand: str, args: list[str], switch: str, folder: Path) -> dict[str, Any]:
    """One usvl run with an :class:`EpochClock`: its fit and test epoch times and its test metrics."""
    main_entry([subcommand, *args, "--model.init_args.feature_cache", switch,
                "--trainer.logger.init_args.save_dir", str(folder), "--trainer.callbacks+=clocks.EpochClock"])
    clock = EpochClock.latest
    report = json.loads(next(folder.rglob("test_metrics.json")).read_text())
    return {"fit_epochs": clock.fit_epochs, "test_epochs": clock.test_epochs, "metrics": report["metrics"]}


def largest_difference(first: dict[str, float], second: dict[str, float]) -> float:
    """The largest absolute difference between two runs' metrics (over the metrics both report)."""
    shared = sorted(set(first) & set(second))
    return max((abs(float(first[k]) - float(second[k])) for k in shared), default=float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="small", help="synthetic data profile (small: 300/100/200 images)")
    parser.add_argument("--epochs", type=int, default=3, help="linear-probe epochs per run; the first is left out")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: USVL_THREADS or cores)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. the machine's load)")
    options = parser.parse_args()
    if options.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is left out)")
    os.chdir(REPO)
    threads = configure_threads(options.threads)
    run_in_process(threads)
    load_before = os.getloadavg()
    probe = ["--config", "configs/thyroid_cls.yaml", "--model.init_args.adapter", "null",
             "--data.init_args.augment", "null", "--data.init_args.profile", options.profile,
             "--trainer.max_epochs", str(options.epochs)]
    zeroshot = ["--config", "configs/zeroshot/thyroid.yaml", "--data.init_args.profile", options.profile]
    runs: dict[str, list[dict[str, Any]]] = {"probe_off": [], "probe_on": [], "zeroshot_off": [], "zeroshot_on": []}
    with empty_feature_cache() as cache, tempfile.TemporaryDirectory(prefix="usvl-feature-runs-") as outputs:
        for repeat in range(options.repeats):
            for name, subcommand, args, switch in (("probe_off", "fit", probe, "false"),
                                                   ("probe_on", "fit", probe, "true"),
                                                   ("zeroshot_off", "test", zeroshot, "false"),
                                                   ("zeroshot_on", "test", zeroshot, "true")):
                runs[name].append(run(subcommand, args, switch, Path(outputs) / f"{name}-{repeat}"))
            print(f"repeat {repeat + 1}/{options.repeats}: probe epochs off "
                  f"{[round(s, 2) for s in runs['probe_off'][-1]['fit_epochs']]} s, on "
                  f"{[round(s, 2) for s in runs['probe_on'][-1]['fit_epochs']]} s; zero-shot test off "
                  f"{runs['zeroshot_off'][-1]['test_epochs'][0]:.2f} s, on "
                  f"{runs['zeroshot_on'][-1]['test_epochs'][0]:.2f} s", flush=True)
        zeroshot_cold = runs["zeroshot_on"][0]["test_epochs"][0]
        runs["zeroshot_on"].append(run("test", zeroshot, "true", Path(outputs) / "zeroshot_on-extra"))
        cache_bytes = sum(p.stat().st_size for p in (cache / "features").glob("*.pt"))
    epochs = {
        "probe_off": [s for r in runs["probe_off"] for s in r["fit_epochs"][1:]],
        "probe_on": [s for r in runs["probe_on"] for s in r["fit_epochs"][1:]],
        "zeroshot_off": [r["test_epochs"][0] for r in runs["zeroshot_off"]],
        "zeroshot_on": [r["test_epochs"][0] for r in runs["zeroshot_on"][1:]],
    }
    speedups = {name: statistics.median(epochs[f"{prefix}_off"]) / statistics.median(epochs[f"{prefix}_on"])
                for name, prefix in WORKLOADS.items()}
    differences = {name: max(largest_difference(off["metrics"], on["metrics"])
                             for off, on in zip(runs[f"{prefix}_off"], runs[f"{prefix}_on"], strict=False))
                   for name, prefix in WORKLOADS.items()}
    figure = min(speedups.values())
    record = {
        "figure": {"name": "feature_cache_speedup", "value": round(figure, 2),
                   "meaning": "the smaller of the linear-probe and zero-shot speedups (median epoch time without the "
                              "cache over with it, warm); bar >= 10"},
        "settings": {"profile": options.profile, "epochs": options.epochs, "repeats": options.repeats,
                     "threads": threads, "linear_probe_args": ["fit", *probe], "zero_shot_args": ["test", *zeroshot],
                     "switch": "--model.init_args.feature_cache false|true"},
        "machine": machine(load_before),
        "epoch_seconds": {name: summary(values) for name, values in epochs.items()},
        "first_epoch_seconds": {name: summary([r["fit_epochs"][0] for r in runs[name]])
                                for name in ("probe_off", "probe_on")},
        "zero_shot_cold_test_seconds": round(zeroshot_cold, 3),
        "speedup": {name: round(value, 2) for name, value in speedups.items()},
        "metrics": {"largest_absolute_difference": differences,
                    "identical": all(value == 0.0 for value in differences.values()),
                    "linear_probe_off": runs["probe_off"][0]["metrics"],
                    "linear_probe_on": runs["probe_on"][0]["metrics"],
                    "zero_shot_off": runs["zeroshot_off"][0]["metrics"],
                    "zero_shot_on": runs["zeroshot_on"][0]["metrics"]},
        "feature_cache_bytes": cache_bytes,
        "note": options.note,
    }
    write_record("feature_cache", record, options.output)
    for name, prefix in WORKLOADS.items():
        print(f"{name}: {statistics.median(epochs[prefix + '_off']):.3f} s -> "
              f"{statistics.median(epochs[prefix + '_on']):.3f} s per epoch, {speedups[name]:.1f}x; metrics differ "
              f"by at most {differences[name]:.3g}")
    print_figure("feature_cache_speedup", figure)


if __name__ == "__main__":
    main()
