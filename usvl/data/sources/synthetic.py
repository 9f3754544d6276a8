"""Embedded synthetic datasets: procedural B-mode images generated into the data cache on first use.

The generator (``usvl.data.synthetic``) writes the NextGen-UIA release layout, deterministically in
(generator version, preset, profile, seed, size). Licence: generated data, no restrictions.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from usvl.data.sources.nextgen import NextGenDataModule, read_nextgen_manifest
from usvl.data.synthetic import GENERATOR_VERSION, PRESETS, PROFILES, Preset, generate_dataset
from usvl.paths import cache_dir

log = logging.getLogger(__name__)

IMAGES_PER_WORKER = 100
"""Fewest images per generation process when the worker count is chosen automatically."""


def synthetic_root(preset: str, profile: str, seed: int, size: int) -> Path:
    """Cache folder of one generated dataset."""
    return cache_dir() / "data" / f"synthetic-{preset}-{profile}-seed{seed}-{size}px-v{GENERATOR_VERSION}"


def ensure_synthetic(preset: str, profile: str, seed: int, size: int, root: str | None = None,
                     workers: int | None = None) -> Path:
    """Generate a synthetic dataset unless it is already complete; return its folder.

    ``workers=None`` uses the available cores, but at most one process per ``IMAGES_PER_WORKER`` images.

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
    counts = PROFILES[profile]
    # Starting a worker process costs seconds (it imports usvl), more than rendering a tiny profile takes.
    workers = workers or max(1, min(len(os.sched_getaffinity(0)), sum(counts.values()) // IMAGES_PER_WORKER))
    log.info("Generating synthetic %s data (%s profile: %s) into %s with %d workers (first use only)",
             preset, profile, counts, target, workers)
    generate_dataset(preset, target, profile=profile, seed=seed, size=size, workers=workers)
    return target


class SyntheticDataModule(NextGenDataModule):
    """A generated twin of an ultrasound dataset, in the release layout, made on first use.

    Cross-centre evaluation: with ``test_preset`` the model trains and validates on ``preset`` and is tested (and
    predicts, with the default ``predict_split="test"``) on another preset with the same classes, e.g. train on
    ``ln-int`` and test on ``ln-ext``, the twin of the NextGen-UIA LN-INT -> LN-EXT protocol. The test split is
    then taken *only* from ``test_preset``: its own test split (``test_split="test"``, the default, as many
    images as the training preset's test split) or every image it has (``test_split="all"``, like the real LN-EXT,
    which is a test-only set); the training preset's test split is left out. Where the test images come from is
    logged and kept in :attr:`test_origin`.

    Args:
        preset: Generator preset (``thyroid``, ``breast``, ``ln-int``, ``ln-ext``, ``prostate``).
        profile: Size profile (``default`` 1000/200/500, ``small`` 300/100/200, ``tiny`` for tests).
        seed: Base seed of the generator.
        generated_size: Side length of the generated images.
        root: Generate into / read from this folder instead of the cache.
        task: ``classification`` or ``segmentation`` (a preset may support only one, e.g. ``prostate``).
        test_preset: Preset whose data forms the test split (same class names as ``preset``); None: ``preset``'s
            own test split.
        test_split: ``test``: the test split of ``test_preset``; ``all``: all of its images.
        test_root: Generate ``test_preset`` into / read it from this folder instead of the cache.
        **kwargs: Arguments of :class:`~usvl.data.datamodule.UltrasoundDataModule` (``image_size``,
            ``batch_size``, ``eval_batch_size``, ``num_workers``, ``augment``, ``predict_split``, ``few_shot``, ...).

    Attributes:
        test_data_root: Folder of ``test_preset``'s data, once prepared.
        test_origin: With ``test_preset``, after setup: ``preset``, ``dataset``, ``root``, ``splits`` and
            ``images`` of the test split; None otherwise.
    """

    def __init__(
        self,
        preset: str = "thyroid",
        profile: Literal["default", "small", "tiny"] = "default",
        seed: int = 0,
        generated_size: int = 256,
        root: str | None = None,
        task: Literal["classification", "segmentation"] = "classification",
        test_preset: str | None = None,
        test_split: Literal["test", "all"] = "test",
        test_root: str | None = None,
        **kwargs: Any,
    ) -> None:
        spec = _preset_spec(preset)
        if task not in spec.tasks:
            raise ValueError(f"Synthetic preset '{preset}' supports {list(spec.tasks)}, not task '{task}'")
        if test_preset is not None:
            test_spec = _preset_spec(test_preset)
            if test_spec.class_names != spec.class_names or task not in test_spec.tasks:
                raise ValueError(
                    f"test_preset '{test_preset}' (classes {list(test_spec.class_names)}, tasks "
                    f"{list(test_spec.tasks)}) does not match preset '{preset}' (classes {list(spec.class_names)}, "
                    f"task '{task}')"
                )
        if test_split not in ("test", "all"):
            raise ValueError(f"test_split must be 'test' or 'all', not {test_split!r}")
        super().__init__(root=root or "", dataset=spec.dataset_name, task=task, class_names=spec.class_names,
                         **kwargs)
        self.preset = preset
        self.profile = profile
        self.seed = seed
        self.generated_size = generated_size
        self.user_root = root
        self.test_preset = test_preset
        self.test_split = test_split
        self.test_root = test_root
        self.test_data_root: str | None = None
        self.test_origin: dict | None = None

    def prepare_data(self) -> None:
        """Generate the dataset (and the test preset's) into the cache on first use."""
        self.root = str(ensure_synthetic(self.preset, self.profile, self.seed, self.generated_size,
                                         self.user_root))
        if self.test_preset is not None:
            self.test_data_root = str(ensure_synthetic(self.test_preset, self.profile, self.seed,
                                                       self.generated_size, self.test_root))

    def read_manifest(self) -> pd.DataFrame:
        """Read the generated layout (generating it first if needed); swap in the test preset's test split."""
        self.prepare_data()
        manifest = read_nextgen_manifest(self.root, self.dataset, self.task)
        if self.test_preset is None:
            return manifest
        test_spec = PRESETS[self.test_preset]
        test_root = self.test_data_root
        external = read_nextgen_manifest(test_root, test_spec.dataset_name, self.task)
        splits = ["train", "val", "test"] if self.test_split == "all" else ["test"]
        external = external[external["split"].isin(splits)].assign(split="test")
        self.test_origin = {"preset": self.test_preset, "dataset": test_spec.dataset_name, "root": test_root,
                            "splits": splits, "images": len(external)}
        log.info("Cross-centre evaluation: train/val from synthetic %s (%s) at %s; test = %d images of the %s "
                 "split(s) of synthetic %s (%s) at %s", self.preset, self.dataset, self.root, len(external),
                 "/".join(splits), self.test_preset, test_spec.dataset_name, test_root)
        own = manifest[manifest["split"] != "test"]
        return pd.concat([own, external], ignore_index=True)


def _preset_spec(preset: str) -> Preset:
    """The registered preset, or a KeyError listing the available ones."""
    if preset not in PRESETS:
        raise KeyError(f"Unknown synthetic preset '{preset}'; available: {sorted(PRESETS)}")
    return PRESETS[preset]
