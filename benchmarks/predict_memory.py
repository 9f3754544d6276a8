"""Prediction memory and speed: ``usvl predict`` over 500 and 5,000 new images of mixed sizes and formats.

Run: ``.venv/bin/python benchmarks/predict_memory.py [--counts 500 5000] [--image-size 224] [--workers 2]``.

1. A short fit of ``configs/breast_seg.yaml`` (smoke trainer, tiny data, at ``--image-size``) gives a checkpoint
   (its quality does not matter here: only memory and speed are measured).
2. A folder of the largest count of generated images is written once: PNG and JPEG alternating, grey and RGB,
   sides drawn from 180 to 720 px, no labels, no masks. Each count is a folder dataset (``<folder>/images/``) of hard
   links to the first images.
3. ``usvl predict --data usvl.data.FolderDataModule`` runs in a fresh process per count (``--data.num_workers``
   workers); its peak resident memory (``wait4``) and the wall time are recorded.

Writes ``benchmarks/results/predict_memory.json`` with images/s and peak RSS per count and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "predict_memory.json"


def usvl(*args: str, env: dict[str, str], log: Path) -> float:
    """Run the ``usvl`` command in a fresh process, output to ``log``; its peak RSS in MiB.

    The peak is that of the ``usvl`` process itself (``wait4``'s ``ru_maxrss``), DataLoader workers included where
    Linux folds a waited-for descendant's maximum into it.

    Raises:
        RuntimeError: The command failed; the message holds the end of its log.
    """
    command = [sys.executable, "-m", "usvl", *args]
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{log.read_text()[-3000:]}")
    return usage.ru_maxrss / 1024


def write_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` speckle-like images of mixed sizes, PNG/JPEG and grey/RGB alternating."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        height, width = (int(v) for v in rng.integers(180, 721, size=2))
        speckle = rng.rayleigh(40.0, size=(height, width)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(speckle)
        if index % 4 in (1, 3):
            image = image.convert("RGB")
        suffix = ".jpg" if index % 2 else ".png"
        image.save(folder / f"case{index:05d}{suffix}")


def linked_subset(source: Path, target: Path, count: int) -> None:
    """A folder of hard links to the first ``count`` files of ``source`` (sorted)."""
    target.mkdir(parents=True)
    for path in sorted(source.iterdir())[:count]:
        os.link(path, target / path.name)


def main() -> None:
    """Fit briefly, then time ``usvl predict`` over each count and write the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="usvl-predict-bench-") as tmp:
        work = Path(tmp)
        runs = work / "runs"
        usvl("fit", "--config", "configs/breast_seg.yaml", "--config", "configs/trainer/smoke.yaml",
             "--config", "configs/data/tiny.yaml", "--data.init_args.image_size", str(args.image_size),
             "--trainer.logger.init_args.save_dir", str(runs), env=env, log=work / "fit.log")
        run = next(runs.glob("*/version_0"))
        checkpoint = next(run.rglob("*.ckpt"))
        counts = sorted(args.counts)
        start = time.perf_counter()
        write_images(work / "images" / "all", counts[-1])
        generate_seconds = time.perf_counter() - start
        results = []
        for count in counts:
            folder = work / f"n{count}"
            linked_subset(work / "images" / "all", folder / "images", count)
            start = time.perf_counter()
            peak_mb = usvl("predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(checkpoint),
                 "--data", "usvl.data.FolderDataModule", "--data.root", str(folder),
                 "--data.num_workers", str(args.workers),
                 "--trainer.logger.init_args.save_dir", str(work / f"predict{count}"), env=env,
                 log=work / f"predict{count}.log")
            seconds = time.perf_counter() - start
            masks = list((work / f"predict{count}").rglob("predictions*/*.png"))
            results.append({"images": count, "seconds": round(seconds, 1), "images_per_s": round(count / seconds, 1),
                            "peak_rss_mb": round(peak_mb, 1), "masks_written": len(masks)})
            print(json.dumps(results[-1]), flush=True)
    payload = {
        "benchmark": "predict_memory",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "usvl predict --config <run>/config.yaml --ckpt_path <ckpt> --data usvl.data.FolderDataModule "
                   f"--data.root <folder> --data.num_workers {args.workers}",
        "settings": {"image_size": args.image_size, "workers": args.workers, "model": "configs/breast_seg.yaml",
                     "images": "PNG/JPEG alternating, grey/RGB, sides 180-720 px", "generate_seconds":
                     round(generate_seconds, 1)},
        "results": results,
        "peak_rss_ratio_largest_to_smallest": round(results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"], 3),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"Written to {RESULTS}")


if __name__ == "__main__":
    main()
