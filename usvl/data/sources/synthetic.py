"""Embedded synthetic datasets: procedural B-mode images generated into the data cache on first use.

The generator (``usvl.data.synthetic``) writes the NextGen-UIA release layout, deterministically in
(generator version, preset, profile, seed, size). Licence: generated data, no restrictions.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import pandas as pd

from usvl.data.sources.nextgen import NextGenDataModule, read_nextgen_manifest
from usvl.data.synthetic import GENERATOR_VERSION, PRESETS, PROFILES, generate_dataset
from usvl.data.transforms import BatchAugment
from usvl.paths import cache_dir

log = logging.getLogger(__name__)


def synthetic_root(preset: str, profile: str, seed: int, size: int) -> Path:
    """Cache folder of one generated dataset."""
    return cache_dir() / "data" / f"synthetic-{preset}-{profile}-seed{seed}-{size}px-v{GENERATOR_VERSION}"


def ensure_synthetic(preset: str, profile: str, seed: int, size: int, root: str | None = None,
                     workers: int | None = None) -> Path:
    """Generate a synthetic dataset unless it is already complete; return its folder.

    Raises:
        KeyError: Unknown preset or profile; the message lists the available ones.
    """
    if preset not in PRESETS:
        raise KeyError(f"Unknown synthetic preset '{preset}'; available: {sorted(PRESETS)}")
    if profile not in PROFILES:
        raise KeyError(f"Unknown synthetic profile '{profile}'; available: {sorted(PROFILES)}")
    target = Path(root) if root else synthetic_root(preset, profile, seed, size)
    if (target / "generator.json").is_file():
        log.info("Reusing synthetic %s data (%s profile) at %s", preset, profile, target)
        return target
    workers = workers or max(1, len(os.sched_getaffinity(0)))
    counts = PROFILES[profile]
    log.info("Generating synthetic %s data (%s profile: %s) into %s with %d workers (first use only)",
             preset, profile, counts, target, workers)
    generate_dataset(preset, target, profile=profile, seed=seed, size=size, workers=workers)
    return target


class SyntheticDataModule(NextGenDataModule):
    """A generated twin of an ultrasound dataset, in the release layout, made on first use.

    Args:
        preset: Generator preset (``thyroid``, ``breast``, ...).
        profile: Size profile (``default`` 1000/200/500, ``small`` 300/100/200, ``tiny`` for tests).
        seed: Base seed of the generator.
        generated_size: Side length of the generated images.
        root: Generate into / read from this folder instead of the cache.
        task: ``classification`` or ``segmentation``.
        image_size: Side length images are resized to for the model.
        batch_size: Training batch size.
        eval_batch_size: Batch size for evaluation.
        num_workers: DataLoader workers.
        augment: Batched training augmentation.
        predict_split: Split used by ``predict``.
    """

    def __init__(
        self,
        preset: str = "thyroid",
        profile: Literal["default", "small", "tiny"] = "default",
        seed: int = 0,
        generated_size: int = 256,
        root: str | None = None,
        task: Literal["classification", "segmentation"] = "classification",
        image_size: int = 224,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: BatchAugment | None = None,
        predict_split: Literal["train", "val", "test"] = "test",
    ) -> None:
        if preset not in PRESETS:
            raise KeyError(f"Unknown synthetic preset '{preset}'; available: {sorted(PRESETS)}")
        spec = PRESETS[preset]
        super().__init__(root or "", spec.dataset_name, task, spec.class_names, image_size, batch_size,
                         eval_batch_size, num_workers, augment, predict_split)
        self.preset = preset
        self.profile = profile
        self.seed = seed
        self.generated_size = generated_size
        self.user_root = root

    def prepare_data(self) -> None:
        """Generate the dataset into the cache on first use."""
        self.root = str(ensure_synthetic(self.preset, self.profile, self.seed, self.generated_size,
                                         self.user_root))

    def read_manifest(self) -> pd.DataFrame:
        """Read the generated layout (generating it first if needed)."""
        self.prepare_data()
        return read_nextgen_manifest(self.root, self.dataset, self.task)
