"""Dataset writer: NextGen-UIA release layout, deterministic, atomic, optionally multi-process."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from usvl.data.manifest import SPLITS

from .acquisition import get_acquisition
from .presets import PRESETS
from .render import render_sample
from .version import GENERATOR_VERSION

SPLIT_SEED_OFFSET = {"train": 0, "val": 1, "test": 2}


def split_labels(preset: str, n: int, split: str, seed: int) -> list[str]:
    """Class labels for one split: counts follow the preset proportions, order is a seeded shuffle.

    Args:
        preset: Preset name.
        n: Number of images in the split.
        split: Split name.
        seed: Base seed.

    Returns:
        A list of ``n`` class names.
    """
    p = PRESETS[preset]
    probs = np.asarray(p.class_probs, np.float64) / np.sum(p.class_probs)
    counts = np.floor(probs * n).astype(int)
    for i in np.argsort(-(probs * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    labels = [c for c, k in zip(p.class_names, counts, strict=True) for _ in range(k)]
    rng = np.random.default_rng([seed, SPLIT_SEED_OFFSET[split], 99])
    return [labels[i] for i in rng.permutation(n)]


def image_seed(seed: int, split: str, index: int) -> int:
    """Per-image seed derived from the base seed, split and index (stable across runs and workers)."""
    return int(np.random.SeedSequence([seed, SPLIT_SEED_OFFSET[split], index]).generate_state(1)[0])


def _job(args: tuple) -> dict:
    """Render one image and write its PNGs; returns the metadata record (top level for spawn pickling)."""
    preset, name, split, label, seed, size, tmp, acquisition = args
    s = render_sample(preset, seed, size=size, label=label, acquisition=acquisition)
    Image.fromarray(s.image, mode="L").save(Path(tmp) / "all" / "images" / name, optimize=False)
    Image.fromarray((s.mask * 255).astype(np.uint8), mode="L").save(Path(tmp) / "all" / "masks" / name)
    p = PRESETS[preset]
    return {
        "name": name,
        "split": split,
        "label": label,
        "label_index": p.class_names.index(label),
        "descriptors": s.descriptors,
        "caption": s.caption,
        **s.meta,
    }


def _plan(preset: str, profile_counts: dict[str, int], seed: int, size: int, tmp: Path,
          acquisition: str | None = None, splits: tuple[str, ...] = SPLITS) -> list[tuple]:
    """List every image job of ``splits`` in a fixed order (names are numbered over all splits regardless)."""
    p = PRESETS[preset]
    jobs, k = [], 0
    for split in SPLITS:
        for i, label in enumerate(split_labels(preset, profile_counts[split], split, seed)):
            k += 1
            if split in splits:
                jobs.append((preset, f"{p.prefix}_{k:05d}.png", split, label, image_seed(seed, split, i), size,
                             str(tmp), acquisition))
    return jobs


def _write_index(tmp: Path, preset: str, records: list[dict]) -> None:
    """Write labels.csv, split lists and metadata.jsonl."""
    ds = PRESETS[preset].dataset_name
    cls_dir, seg_dir = tmp / "classification" / ds, tmp / "segmentation" / ds
    cls_dir.mkdir(parents=True)
    seg_dir.mkdir(parents=True)
    (cls_dir / "labels.csv").write_text("".join(f"{r['name']},{r['label_index']}\n" for r in records))
    for split in SPLITS:
        names = "".join(f"{r['name']}\n" for r in records if r["split"] == split)
        (cls_dir / f"{split}.txt").write_text(names)
        (seg_dir / f"{split}.txt").write_text(names)
    with open(tmp / "metadata.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")


def generate_dataset(
    preset: str, root: str | Path, profile: str = "default", seed: int = 0, size: int = 256, workers: int = 1,
    acquisition: str | None = None, splits: tuple[str, ...] | None = None,
) -> Path:
    """Generate a synthetic dataset in the NextGen-UIA release layout.

    Output is deterministic in (generator version, preset, profile, seed, size, acquisition) regardless of
    ``workers``. Files are written to a temporary sibling folder that is renamed onto ``root`` only when complete.

    Args:
        preset: Preset name (``"thyroid"``, ``"breast"``, ``"ln-int"``, ``"ln-ext"``, ``"prostate"``).
        root: Destination folder; must not exist or be empty.
        profile: Size profile, a key of ``PROFILES``.
        seed: Base seed.
        size: Image side in pixels.
        workers: Processes to use (spawn-safe multiprocessing pool when > 1).
        acquisition: Acquisition profile (``usvl.data.synthetic.ACQUISITIONS``): the same images (anatomy,
            lesions, labels, names) as without it, imaged differently.
        splits: Write only these splits (same names, labels and images as in the full dataset), e.g.
            ``("test",)`` for a shifted test set; None: all.

    Returns:
        The dataset root.
    """
    from . import PROFILES

    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; available: {sorted(PRESETS)}")
    if acquisition is not None:
        get_acquisition(acquisition)
    splits = tuple(splits or SPLITS)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown splits {unknown}; expected a subset of {list(SPLITS)}")
    counts = PROFILES[profile]
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        (tmp / "all" / "images").mkdir(parents=True)
        (tmp / "all" / "masks").mkdir(parents=True)
        jobs = _plan(preset, counts, seed, size, tmp, acquisition, splits)
        if workers > 1:
            with get_context("spawn").Pool(workers) as pool:
                records = pool.map(_job, jobs, chunksize=8)
        else:
            records = [_job(j) for j in jobs]
        _write_index(tmp, preset, records)
        _write_manifest(tmp, preset, profile, seed, size, records, acquisition, splits)
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _write_manifest(tmp: Path, preset: str, profile: str, seed: int, size: int, records: list[dict],
                    acquisition: str | None = None, splits: tuple[str, ...] = SPLITS) -> None:
    """Write generator.json with counts per split and class (and the acquisition profile and splits, when set)."""
    p = PRESETS[preset]
    counts = {
        s: {c: sum(r["split"] == s and r["label"] == c for r in records) for c in p.class_names}
        for s in SPLITS
    }
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "preset": preset,
        "profile": profile,
        "seed": seed,
        "size": size,
        "counts": counts,
        "class_names": list(p.class_names),
        "dataset_name": p.dataset_name,
    }
    if acquisition is not None:
        profile_record = get_acquisition(acquisition)
        manifest["acquisition"] = {"key": profile_record.key, **asdict(profile_record)}
    if tuple(splits) != tuple(SPLITS):
        manifest["splits"] = list(splits)
    (tmp / "generator.json").write_text(json.dumps(manifest, indent=2) + "\n")
