"""Load test of ``usvl predict``: images/s and memory of the whole process tree over 500 and 5,000 new images.

Run: ``.venv/bin/python benchmarks/predict_load.py [--counts 500 5000] [--workers 2] [--experiment breast_seg]``.

1. Images (cached under ``<usvl cache>/benchmarks/predict_load/``, by count and seed): widths and heights drawn
   independently from 200 to 1200 px; PNG (zlib level 1) and JPEG (quality 90), grey and RGB in turn. Content: one
   of 16 B-mode scenes of the project's generator (``render_sample``, the experiment's preset, 256 px) resized to the
   drawn size and multiplied by fresh Rayleigh speckle at that size, so every file is different and compresses like
   speckled B-mode.
2. A checkpoint (cached by experiment and usvl version): ``usvl fit --config configs/<experiment>.yaml --config
   configs/trainer/smoke.yaml --data.init_args.profile tiny``, i.e. the shipped model (frozen embedded towers,
   adapters, head), its image size and batch sizes, after one training step. Its quality does not matter: the
   forward pass and what predict writes (a mask at the original size, an overlay, a CSV row per image) cost the same.
3. For each count a fresh ``usvl predict --config <run>/config.yaml --ckpt_path <ckpt> --data
   usvl.data.FolderDataModule --data.root <folder> --data.num_workers <workers>`` runs while this script reads, every
   ``--interval`` s, the RSS of the process and all its descendants (the data-loader workers), and every
   ``--pss-interval`` s their PSS and USS, and counts the rows already flushed to ``predictions.csv``.

"Peak RSS" is the largest RSS summed over the tree (parent + workers) in any reading: the issue's measure, and an
upper bound, since pages the forked workers share with the parent count once per process. Peak PSS, summed over the
tree, is the footprint itself. The kernel's own high-water mark of the largest single process (``wait4``) is kept as
a check on the sampling. Images/s is the rows over the time from the CSV's creation (the writer's
``on_predict_start``: the model is loaded and the workers were just forked) to the last row; the wall rate
includes process start and model load.

Writes into ``--out`` (default ``benchmarks/results/predict_load/``): ``predict_load.json`` (settings and one record
per count), ``curve_n<count>.csv`` (every reading), ``predict_load.md`` (the table for BENCHMARKS.md, also printed)
and ``predict_load.png`` (memory against images predicted and against time).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image
from predict_memory import usvl as run_usvl
from tree_memory import tree_memory

import usvl
from usvl.data.synthetic import render_sample
from usvl.paths import cache_dir

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "predict_load"
IMAGE_RECIPE = 1
"""Version of the image recipe below; part of the cache key, so changing the recipe regenerates the images."""
SCENES = 16
PRESETS = {"breast_seg": "breast", "thyroid_cls": "thyroid"}
CURVE_COLUMNS = ("t_s", "images", "processes", "rss_tree_mib", "rss_main_mib", "rss_workers_mib", "pss_tree_mib",
                 "uss_tree_mib")


def image_name(index: int) -> str:
    """File name of image ``index``: PNG for even, JPEG for odd indices."""
    return f"case{index:05d}{'.jpg' if index % 2 else '.png'}"


def write_image(scenes: list[np.ndarray], seed: int, index: int, folder: Path, sides: tuple[int, int]) -> None:
    """Write image ``index`` into ``folder`` (through a hidden temporary file, so no file is ever half-written).

    The same scenes, ``seed``, ``index`` and ``sides`` always give the same pixels, whatever else was generated.
    """
    rng = np.random.default_rng([seed, index])
    width, height = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
    scene = Image.fromarray(scenes[index % len(scenes)]).resize((width, height), Image.Resampling.BILINEAR)
    speckle = rng.rayleigh(np.sqrt(2 / np.pi), size=(height, width))  # mean 1
    image = Image.fromarray((np.asarray(scene, dtype=np.float64) * speckle).clip(0, 255).astype(np.uint8))
    if index % 4 in (1, 2):
        image = image.convert("RGB")
    name = image_name(index)
    partial = folder / f".{name}.part"
    if name.endswith(".jpg"):
        image.save(partial, format="JPEG", quality=90)
    else:
        image.save(partial, format="PNG", compress_level=1)  # fast to write; decoding costs about the same
    os.replace(partial, folder / name)


def write_images(scenes: list[np.ndarray], seed: int, indices: list[int], folder: Path, sides: tuple[int, int]) -> None:
    """Write the images ``indices`` (:func:`write_image`); one task of a process pool."""
    for index in indices:
        write_image(scenes, seed, index, folder, sides)


def ensure_images(root: Path, count: int, seed: int, preset: str, sides: tuple[int, int], jobs: int = 1) -> Path:
    """A folder dataset (``<folder>/images/``) of the first ``count`` images of the recipe, made once.

    The images live in one pool per recipe, seed, preset and size range; each count is a folder of hard links to
    the pool's first ``count`` images. Missing images are written by ``jobs`` processes.

    Returns:
        The folder to pass as ``--data.root``.
    """
    base = root / f"images-v{IMAGE_RECIPE}-{preset}-seed{seed}-{sides[0]}to{sides[1]}px"
    pool = base / "all"
    pool.mkdir(parents=True, exist_ok=True)
    for partial in pool.glob(".*.part"):
        partial.unlink()
    names = [image_name(index) for index in range(count)]
    missing = [index for index, name in enumerate(names) if not (pool / name).is_file()]
    if missing:
        print(f"Generating {len(missing)} images into {pool}", flush=True)
        scenes = [render_sample(preset, seed * SCENES + k, 256).image for k in range(SCENES)]
        jobs = max(1, min(jobs, len(missing)))
        with ProcessPoolExecutor(jobs) as executor:
            list(executor.map(write_images, [scenes] * jobs, [seed] * jobs, [missing[k::jobs] for k in range(jobs)],
                              [pool] * jobs, [sides] * jobs))
    target = base / f"n{count}"
    if sorted(p.name for p in (target / "images").glob("*")) != names:
        shutil.rmtree(target, ignore_errors=True)
        (target / "images").mkdir(parents=True)
        for name in names:
            os.link(pool / name, target / "images" / name)
    return target


def ensure_checkpoint(root: Path, experiment: str, env: dict[str, str]) -> tuple[Path, Path, bool]:
    """The run config and checkpoint of a one-step fit of ``configs/<experiment>.yaml``, made once per usvl version.

    Returns:
        The run's ``config.yaml``, its best checkpoint, and whether the fit ran now (False: reused).
    """
    folder = root / f"fit-{experiment}-usvl{usvl.__version__}"
    fitted = False
    if not list(folder.glob("*/version_0/checkpoints/*.ckpt")):
        partial = folder.with_name(folder.name + ".part")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        print(f"Fitting the checkpoint into {folder}", flush=True)
        run_usvl("fit", "--config", f"configs/{experiment}.yaml", "--config", "configs/trainer/smoke.yaml",
                 "--data.init_args.profile", "tiny", "--trainer.logger.init_args.save_dir", str(partial), env=env,
                 log=partial / "fit.log")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        fitted = True
    run = next(folder.glob("*/version_0"))
    checkpoints = sorted((run / "checkpoints").glob("*.ckpt"), key=lambda path: path.name == "last.ckpt")
    return run / "config.yaml", checkpoints[0], fitted


class RowCounter:
    """The number of data rows flushed so far to the prediction CSV under a folder.

    The CSV is ``*/version_*/predictions/predictions.csv``, or a hidden temporary file beside it
    (``.predictions.csv.*.tmp``, as :mod:`usvl`'s atomic writers name them) should the writer stream into one and
    rename it at the end: the count then carries on through the rename.
    """

    PATTERNS = ("*/version_*/predictions/predictions.csv", "*/version_*/predictions/.predictions.csv.*.tmp")

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path: Path | None = None
        self.created: float | None = None
        self._offset = 0
        self._lines = 0

    def rows(self, now: float) -> int:
        """Rows written so far (0 before the CSV exists); ``now`` is recorded as :attr:`created` on first sight."""
        chunk = self._read()
        if chunk is None:
            return max(self._lines - 1, 0)
        if self.created is None:
            self.created = now
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        self._lines += complete.count(b"\n")
        return max(self._lines - 1, 0)

    def _read(self) -> bytes | None:
        """The bytes after those counted, from the CSV (found again if it was renamed); None when there is none."""
        for _ in range(2):
            if self.path is None:
                found = [path for pattern in self.PATTERNS for path in sorted(self.folder.glob(pattern))]
                if not found:
                    return None
                self.path = found[0]
            try:
                with self.path.open("rb") as handle:
                    handle.seek(self._offset)
                    return handle.read()
            except FileNotFoundError:
                self.path = None
        return None


def sample_predict(command: list[str], env: dict[str, str], out: Path, log: Path, interval: float,
                   pss_interval: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``command`` (a ``usvl predict`` writing under ``out``) and read its tree's memory until it exits.

    Returns:
        The readings (one dict per reading, keys :data:`CURVE_COLUMNS`) and the run's timings: ``wall_s``,
        ``csv_created_s`` (None when no CSV appeared), ``rows``, ``last_row_s``, ``max_rss_single_process_mib`` and
        ``cpu_s`` (user + system time of the process and the workers it waited for).

    Raises:
        RuntimeError: The command failed; the message holds the end of its log.
    """
    counter = RowCounter(out)
    samples: list[dict[str, Any]] = []
    next_full = 0.0
    last_report = 0.0
    start = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    root = psutil.Process(process.pid)
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        now = time.perf_counter() - start
        full = pss_interval > 0 and now >= next_full
        memory = tree_memory(root, full=full)
        if memory is not None:
            next_full = now + pss_interval if full else next_full
            samples.append({"t_s": round(now, 2), "images": counter.rows(now), "processes": memory.processes,
                            "rss_tree_mib": round(memory.rss_mib, 1), "rss_main_mib": round(memory.main_rss_mib, 1),
                            "rss_workers_mib": round(memory.workers_rss_mib, 1),
                            "pss_tree_mib": None if memory.pss_mib is None else round(memory.pss_mib, 1),
                            "uss_tree_mib": None if memory.uss_mib is None else round(memory.uss_mib, 1)})
            if now - last_report >= 30:
                last_report = now
                print(f"  {now:7.1f} s  {samples[-1]['images']:6d} images  RSS {memory.rss_mib:8.1f} MiB "
                      f"({memory.processes} processes)", flush=True)
        time.sleep(interval)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{log.read_text()[-3000:]}")
    rows = counter.rows(wall)
    last_row = next((s["t_s"] for s in samples if s["images"] >= rows), wall) if rows else None
    timings = {"wall_s": wall, "csv_created_s": counter.created, "rows": rows, "last_row_s": last_row,
               "max_rss_single_process_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}
    return samples, timings


def summarise(count: int, samples: list[dict[str, Any]], timings: dict[str, Any]) -> dict[str, Any]:
    """One count's record: rates, peaks, the peak over the first 500 images and the RSS slope after warm-up.

    The slope (MiB per 1,000 images) is that of a straight line through the lowest tree RSS at each row count, from
    10 % of the images on, while all workers run: a leak raises that floor, a batch's transient peak does not.
    """

    def peak(key: str, rows: list[dict[str, Any]]) -> float | None:
        values = [s[key] for s in rows if s[key] is not None]
        return round(max(values), 1) if values else None

    rows = timings["rows"]
    created, last_row = timings["csv_created_s"], timings["last_row_s"]
    predict_s = last_row - created if created is not None and last_row is not None else None
    if len({s["images"] for s in samples}) < 3:  # rows not seen growing: no rate, and no curve against images
        print("Warning: predictions.csv was not seen filling up during the run; no prediction rate", flush=True)
        predict_s = None
    processes = max((s["processes"] for s in samples), default=0)
    floors: dict[int, float] = {}  # the lowest tree RSS at each row count: the level between batches' peaks
    for s in samples:
        if 0.1 * count <= s["images"] < rows and s["processes"] == processes:
            floors[s["images"]] = min(floors.get(s["images"], s["rss_tree_mib"]), s["rss_tree_mib"])
    slope = None
    if len(floors) >= 3:
        slope = round(float(np.polyfit(list(floors), list(floors.values()), 1)[0]) * 1000, 2)
    first = [s for s in samples if s["images"] <= 500]
    return {
        "images": count,
        "rows_written": rows,
        "wall_s": round(timings["wall_s"], 1),
        "startup_s": None if created is None else round(created, 1),
        "predict_s": None if predict_s is None else round(predict_s, 1),
        "images_per_s": round(rows / predict_s, 2) if predict_s else None,
        "images_per_s_wall": round(rows / timings["wall_s"], 2),
        "cpu_s": round(timings["cpu_s"], 1),
        "peak_rss_tree_mib": peak("rss_tree_mib", samples),
        "peak_rss_main_mib": peak("rss_main_mib", samples),
        "peak_rss_workers_mib": peak("rss_workers_mib", samples),
        "peak_pss_tree_mib": peak("pss_tree_mib", samples),
        "peak_uss_tree_mib": peak("uss_tree_mib", samples),
        "max_rss_single_process_mib": round(timings["max_rss_single_process_mib"], 1),
        "peak_rss_tree_first_500_images_mib": peak("rss_tree_mib", first),
        "rss_slope_mib_per_1000_images": slope,
        "max_processes": processes,
        "readings": len(samples),
    }


def ratio(results: list[dict[str, Any]], key: str) -> float | None:
    """``key`` of the largest count over that of the smallest (None with one count or a missing value)."""
    if len(results) < 2 or not results[0][key] or not results[-1][key]:
        return None
    return round(results[-1][key] / results[0][key], 3)


def markdown(results: list[dict[str, Any]], ratios: dict[str, float | None]) -> str:
    """The results table for ``BENCHMARKS.md`` and one line on flatness."""

    def cell(value: Any, digits: int = 1) -> str:
        return "—" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:,.{digits}f}"

    lines = ["| images | wall (s) | start-up (s) | images/s (prediction) | images/s (wall) | peak RSS, process tree "
             "(MiB) | peak PSS, process tree (MiB) | peak RSS, largest process (MiB) | RSS slope (MiB / 1,000 "
             "images) | rows written |", "|---|---|---|---|---|---|---|---|---|---|"]
    digits = {"images_per_s": 2, "images_per_s_wall": 2}
    keys = ("wall_s", "startup_s", "images_per_s", "images_per_s_wall", "peak_rss_tree_mib", "peak_pss_tree_mib",
            "max_rss_single_process_mib", "rss_slope_mib_per_1000_images")
    for r in results:
        cells = (cell(r[key], digits.get(key, 1)) for key in keys)
        lines.append(" | ".join([f"| {r['images']:,}", *cells, f"{r['rows_written']:,} |"]))
    if ratios["peak_rss_tree"] is not None:
        flat = "within" if ratios["peak_rss_tree"] <= 1.10 else "NOT within"
        lines.append("")
        lines.append(f"Peak RSS of the process tree at {results[-1]['images']:,} images / at {results[0]['images']:,}: "
                     f"{ratios['peak_rss_tree']:.3f} ({flat} 10 %); peak PSS {cell(ratios['peak_pss_tree'], 3)}; "
                     f"images/s {cell(ratios['images_per_s'], 3)}.")
    return "\n".join(lines) + "\n"


def plot(curves: dict[int, list[dict[str, Any]]], path: Path) -> None:
    """RSS and PSS of the process tree against images predicted (per-batch peaks) and against time, a colour a run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_images, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (count, samples), colour in zip(curves.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red"),
                                        strict=False):
        envelope = per_batch_peaks(samples)
        by_images.plot(list(envelope), [peaks[0] for peaks in envelope.values()], ".-", color=colour,
                       label=f"{count:,} images: RSS")
        by_images.plot([n for n, peaks in envelope.items() if peaks[1] is not None],
                       [peaks[1] for peaks in envelope.values() if peaks[1] is not None], "x--", color=colour,
                       label=f"{count:,} images: PSS")
        full = [s for s in samples if s["pss_tree_mib"] is not None]
        by_time.plot([s["t_s"] for s in samples], [s["rss_tree_mib"] for s in samples], color=colour,
                     label=f"{count:,} images: RSS")
        by_time.plot([s["t_s"] for s in full], [s["pss_tree_mib"] for s in full], ".", markersize=3, color=colour)
    by_images.set(xlabel="images predicted (rows in predictions.csv)", ylabel="MiB, summed over parent + workers",
                  title="peak memory while each batch is predicted")
    by_time.set(xlabel="seconds since the process started", title="memory against time")
    for axis in (by_images, by_time):
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    by_images.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def per_batch_peaks(samples: list[dict[str, Any]]) -> dict[int, tuple[float, float | None]]:
    """The highest RSS and PSS (None: not read) of the tree while ``n`` rows were written, for each ``n`` seen."""
    peaks: dict[int, tuple[float, float | None]] = {}
    for s in samples:
        rss, pss = peaks.get(s["images"], (0.0, None))
        if s["pss_tree_mib"] is not None:
            pss = max(pss or 0.0, s["pss_tree_mib"])
        peaks[s["images"]] = (max(rss, s["rss_tree_mib"]), pss)
    return peaks


def write_curve(samples: list[dict[str, Any]], path: Path) -> None:
    """Every reading of one run as CSV."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_COLUMNS)
        writer.writeheader()
        writer.writerows(samples)


def main() -> None:
    """Make the images and the checkpoint, run ``usvl predict`` per count and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--experiment", choices=sorted(PRESETS), default="breast_seg")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", type=int, nargs=2, default=[200, 1200], metavar=("MIN", "MAX"))
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between RSS readings")
    parser.add_argument("--pss-interval", type=float, default=2.0, help="seconds between PSS/USS readings (0: none)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes writing the images")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cache", type=Path, default=cache_dir() / "benchmarks" / "predict_load")
    args = parser.parse_args()

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    counts = sorted(args.counts)
    sides = (args.sides[0], args.sides[1])
    started = time.perf_counter()
    folders = {count: ensure_images(args.cache, count, args.seed, PRESETS[args.experiment], sides,
                             args.jobs) for count in reversed(counts)}
    images_s = time.perf_counter() - started
    started = time.perf_counter()
    config, checkpoint, fitted = ensure_checkpoint(args.cache, args.experiment, env)
    fit_s = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    results, curves = [], {}
    for count in counts:
        command = [sys.executable, "-m", "usvl", "predict", "--config", str(config), "--ckpt_path", str(checkpoint),
                   "--data", "usvl.data.FolderDataModule", "--data.root", str(folders[count]),
                   "--data.num_workers", str(args.workers)]
        print(f"Predicting {count:,} images (load average {os.getloadavg()[0]:.2f})", flush=True)
        load_before = os.getloadavg()
        with tempfile.TemporaryDirectory(prefix="usvl-predict-load-") as tmp:
            out = Path(tmp)
            samples, timings = sample_predict([*command, "--trainer.logger.init_args.save_dir", str(out)], env, out,
                                              args.out / f"predict_n{count}.log", args.interval, args.pss_interval)
        record = {**summarise(count, samples, timings), "load_average_before": [round(v, 2) for v in load_before],
                  "load_average_after": [round(v, 2) for v in os.getloadavg()]}
        if record["rows_written"] != count:
            raise RuntimeError(f"predict wrote {record['rows_written']} rows for {count} images")
        results.append(record)
        curves[count] = samples
        write_curve(samples, args.out / f"curve_n{count}.csv")
        print(json.dumps(record), flush=True)
    ratios = {name: ratio(results, key) for name, key in (("peak_rss_tree", "peak_rss_tree_mib"),
                                                          ("peak_pss_tree", "peak_pss_tree_mib"),
                                                          ("images_per_s", "images_per_s"))}
    payload = {
        "benchmark": "predict_load",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "usvl predict --config <run>/config.yaml --ckpt_path <ckpt> --data usvl.data.FolderDataModule "
                   f"--data.root <folder> --data.num_workers {args.workers}",
        "settings": {
            "experiment": f"configs/{args.experiment}.yaml", "workers": args.workers, "seed": args.seed,
            "images": f"sides {sides[0]}-{sides[1]} px (width, height drawn independently), PNG (zlib level 1)/JPEG "
                      "(quality 90) alternating, grey and RGB; content: 16 B-mode scenes of the usvl generator "
                      f"('{PRESETS[args.experiment]}' preset, 256 px) resized, times Rayleigh speckle at full size",
            "checkpoint": f"usvl fit --config configs/{args.experiment}.yaml --config configs/trainer/smoke.yaml "
                          f"--data.init_args.profile tiny (one step); {checkpoint.name}",
            "fit_s": round(fit_s, 1) if fitted else "reused", "images_s": round(images_s, 1),
            "interval_s": args.interval, "pss_interval_s": args.pss_interval,
            "usvl_threads": os.environ.get("USVL_THREADS"), "usvl_version": usvl.__version__,
        },
        "results": results,
        "ratios_largest_to_smallest": ratios,
        "flat_within_10_percent": None if ratios["peak_rss_tree"] is None else ratios["peak_rss_tree"] <= 1.10,
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "platform": platform.platform(), "python": platform.python_version()},
    }
    (args.out / "predict_load.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown(results, ratios)
    (args.out / "predict_load.md").write_text(table)
    plot(curves, args.out / "predict_load.png")
    print(table)
    print(f"Written to {args.out}")


if __name__ == "__main__":
    main()
