"""Loader throughput: decoding PNG files vs loading the decoded-array disk cache vs iterating the in-memory dataset.

Run: ``.venv/bin/python benchmarks/loader_throughput.py [--threads N] [--repeats R]``. On the synthetic breast data
(``ensure_synthetic("breast", "small", 0, 256)``, segmentation manifest, images and masks, all splits) it times R
repeats of

* ``decode``: building ``UltrasoundDataset(..., cache=False)``, i.e. decoding and resizing every PNG image and
  mask (the files are in the OS page cache after the first repeat, so this is decoding cost, not disk reads);
* ``disk cache``: building the dataset from a warm decoded-array cache (``np.load`` + copy);
* ``epoch``: one shuffled pass of a ``DataLoader`` (``num_workers=0``, the data module's default) over the
  in-memory dataset,

and prints and writes (``benchmarks/results/loader_throughput.json``) the median images/s of each and their ratios.
The cache lives in a temporary folder, so the run neither reads nor pollutes the user's cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import PIL
import torch
from record import summary, timed
from torch.utils.data import DataLoader

from usvl.data.dataset import UltrasoundDataset
from usvl.data.decode import DECODER_VERSION
from usvl.data.sources.nextgen import read_nextgen_manifest
from usvl.data.sources.synthetic import ensure_synthetic
from usvl.data.synthetic import PRESETS
from usvl.utils.threads import available_cores, configure_threads

RESULTS = Path(__file__).resolve().parent / "results" / "loader_throughput.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch and decoding threads (default: USVL_THREADS)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-masks", action="store_true", help="images only (classification)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. the machine's load)")
    options = parser.parse_args()
    threads = configure_threads(options.threads)
    load_before = os.getloadavg()
    with_masks = not options.no_masks
    root = ensure_synthetic("breast", "small", 0, 256)
    manifest = read_nextgen_manifest(root, PRESETS["breast"].dataset_name, "segmentation")
    count = len(manifest)
    print(f"{count} images (+ masks: {with_masks}) of {root.name}, size {options.size}, threads={threads}, "
          f"repeats={options.repeats} (median images/s)")

    def build(cache) -> UltrasoundDataset:
        return UltrasoundDataset(manifest, options.size, with_masks=with_masks, threads=threads, cache=cache)

    build(False)  # warm-up: imports, page cache of the files
    decode = timed(lambda: len(build(False)), options.repeats)
    with tempfile.TemporaryDirectory(prefix="usvl-decoded-") as folder:
        warm = build(folder)
        assert not warm.cache_hit

        def from_cache() -> int:
            dataset = build(folder)
            assert dataset.cache_hit
            return len(dataset)

        from_cache()  # warm-up: the entry's first read
        cached = timed(from_cache, options.repeats)
        entry_bytes = sum(p.stat().st_size for p in Path(folder).iterdir())
    loader = DataLoader(warm, batch_size=options.batch, shuffle=True, num_workers=0)

    def epoch() -> int:
        seen = 0
        for batch in loader:
            seen += batch["image"].shape[0]
        return seen

    epoch()
    epochs = timed(epoch, options.repeats)
    results = {"decode": summary(decode, digits=1), "disk_cache": summary(cached, digits=1),
               "epoch_in_memory": summary(epochs, digits=1)}
    ratios = {
        "disk_cache_over_decode": round(results["disk_cache"]["median"] / results["decode"]["median"], 1),
        "epoch_over_decode": round(results["epoch_in_memory"]["median"] / results["decode"]["median"], 1),
    }
    print("| case | median img/s | min | max |")
    print("|---|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | {row['median']:.1f} | {row['min']:.1f} | {row['max']:.1f} |")
    print(f"disk cache / decode: {ratios['disk_cache_over_decode']}x; epoch / decode: {ratios['epoch_over_decode']}x")
    record = {
        "benchmark": "loader_throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {"root": root.name, "images": count, "with_masks": with_masks, "size": options.size,
                 "source_size": 256, "format": "PNG", "cache_entry_bytes": entry_bytes},
        "settings": {"threads": threads, "repeats": options.repeats, "batch": options.batch, "num_workers": 0,
                     "decoder_version": DECODER_VERSION},
        "machine": {"cpu": platform.processor() or platform.machine(), "available_cores": available_cores(),
                    "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                    "python": platform.python_version(), "torch": torch.__version__, "pillow": PIL.__version__,
                    "numpy": np.__version__},
        "images_per_s": results,
        "ratios": ratios,
        "note": options.note,
    }
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {options.output}")


if __name__ == "__main__":
    main()
