"""UltrasoundDataModule: manifest -> splits -> datasets -> loaders, shared by every dataset source."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import pandas as pd
from torch.utils.data import DataLoader

from usvl.data.dataset import UltrasoundDataset
from usvl.data.transforms import BatchAugment

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("name", "image", "mask", "label", "split", "patient")


class UltrasoundDataModule(pl.LightningDataModule):
    """Base data module; subclasses implement :meth:`read_manifest` for one on-disk layout.

    Args:
        task: ``classification`` (labels) or ``segmentation`` (masks).
        class_names: Class names in label order.
        image_size: Side length images are resized to.
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation, test and predict (defaults to ``batch_size``).
        num_workers: DataLoader workers (images are decoded into memory once, so 0 is usually fastest).
        augment: Batched training augmentation, applied after the batch reaches the device.
        predict_split: Split used by ``predict``.
    """

    def __init__(
        self,
        task: Literal["classification", "segmentation"] = "classification",
        class_names: Sequence[str] = ("benign", "malignant"),
        image_size: int = 224,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: BatchAugment | None = None,
        predict_split: Literal["train", "val", "test"] = "test",
    ) -> None:
        super().__init__()
        self.task = task
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.predict_split = predict_split
        self.datasets: dict[str, UltrasoundDataset] = {}
        self.manifest: pd.DataFrame | None = None

    @abstractmethod
    def read_manifest(self) -> pd.DataFrame:
        """Read the dataset layout into a manifest with the columns of ``MANIFEST_COLUMNS``."""

    def validate_manifest(self, manifest: pd.DataFrame) -> pd.DataFrame:
        """Check columns, splits and labels of a manifest.

        Raises:
            ValueError: A column is missing, a split is empty, or a label is outside ``[0, num_classes)``.
        """
        missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
        if missing:
            raise ValueError(f"Manifest lacks columns {missing}")
        for split in SPLITS:
            if not (manifest["split"] == split).any():
                raise ValueError(f"The {split} split is empty")
        if self.task == "classification":
            labels = manifest["label"]
            bad = manifest[labels.isna() | (labels < 0) | (labels >= self.num_classes)]
            if len(bad):
                raise ValueError(
                    f"{len(bad)} images have labels outside 0..{self.num_classes - 1} "
                    f"({self.class_names}), e.g. {bad['name'].head(5).tolist()}"
                )
        return manifest

    def setup(self, stage: str | None = None) -> None:
        """Read the manifest once and decode the splits the stage needs."""
        if self.manifest is None:
            self.manifest = self.validate_manifest(self.read_manifest())
            counts = self.manifest.groupby(["split", "label"]).size().to_dict()
            log.info("Manifest: %d images; per (split, label): %s", len(self.manifest), counts)
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": (self.predict_split,)}.get(stage or "", SPLITS)
        for split in needed:
            if split not in self.datasets:
                rows = self.manifest[self.manifest["split"] == split].reset_index(drop=True)
                self.datasets[split] = UltrasoundDataset(rows, self.image_size,
                                                         with_masks=self.task == "segmentation")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            drop_last=shuffle and len(self.datasets[split]) > self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches of the ``predict_split``."""
        return self._loader(self.predict_split, shuffle=False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Apply the batched augmentation to training batches only."""
        if self.augment is not None and self.trainer is not None and self.trainer.training:
            batch["image"], mask = self.augment(batch["image"], batch.get("mask"))
            if mask is not None:
                batch["mask"] = mask
        return batch

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class name."""
        if self.manifest is None:
            self.manifest = self.validate_manifest(self.read_manifest())
        counts: dict[str, dict[str, int]] = {}
        for (split, label), n in self.manifest.groupby(["split", "label"]).size().items():
            name = self.class_names[int(label)] if 0 <= label < self.num_classes else str(label)
            counts.setdefault(split, {})[name] = int(n)
        return counts
