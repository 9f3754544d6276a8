"""The NextGen-UIA release layout (also what the synthetic generator writes).

Layout (Qu et al., arXiv 2506.08849, github.com/jinggqu/NextGen-UIA, release ``0.1``)::

    <root>/all/images/<name>            every image of every dataset, one flat folder
    <root>/all/masks/<name>             binary mask with the same file name
    <root>/classification/<DS>/labels.csv       no header: ``name,int_label`` (0 benign, 1 malignant)
    <root>/classification/<DS>/{train,val,test}.txt
    <root>/segmentation/<DS>/{train,val,test}.txt

Please cite the paper and the original datasets when you use the release.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from usvl.data.datamodule import SPLITS, UltrasoundDataModule
from usvl.data.transforms import BatchAugment


class DatasetNotFoundError(FileNotFoundError):
    """A real dataset's folder is missing or incomplete; the message says where to put it."""


def read_split_file(path: Path) -> list[str]:
    """File names listed one per line (blank lines ignored)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_labels_csv(path: Path) -> dict[str, int]:
    """Headerless ``name,int_label`` rows.

    Raises:
        ValueError: A row is malformed or its label is not an integer; the message names the row.
    """
    labels = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        name, _, value = line.rpartition(",")
        try:
            labels[name.strip()] = int(value)
        except ValueError as error:
            raise ValueError(f"{path}:{number}: expected 'name,int_label', got {line!r}") from error
    return labels


def read_nextgen_manifest(root: str | Path, dataset: str, task: str = "classification") -> pd.DataFrame:
    """Read one dataset of the release layout into a manifest.

    Args:
        root: Folder holding ``all/``, ``classification/`` and ``segmentation/``.
        dataset: Dataset folder name, e.g. ``BUSI``.
        task: Which split files to read: ``classification`` or ``segmentation``.

    Raises:
        DatasetNotFoundError: Folders or split files are missing.
        FileNotFoundError: A listed image does not exist (all missing names are reported at once).
        ValueError: A classification image has no label.
    """
    root = Path(root)
    split_dir = root / task / dataset
    if not split_dir.is_dir():
        raise DatasetNotFoundError(
            f"{split_dir} does not exist. Put the NextGen-UIA release (github.com/jinggqu/NextGen-UIA, "
            f"release 0.1) under {root} so that it holds all/images, all/masks and {task}/{dataset}/"
        )
    labels_path = root / "classification" / dataset / "labels.csv"
    labels = read_labels_csv(labels_path) if labels_path.is_file() else {}
    rows = []
    for split in SPLITS:
        split_file = split_dir / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetNotFoundError(f"Split file {split_file} is missing")
        for name in read_split_file(split_file):
            mask = root / "all" / "masks" / name
            rows.append({
                "name": name,
                "image": str(root / "all" / "images" / name),
                "mask": str(mask) if mask.is_file() else None,
                "label": labels.get(name, -1),
                "split": split,
                "patient": None,
            })
    manifest = pd.DataFrame(rows, columns=["name", "image", "mask", "label", "split", "patient"])
    missing = [p for p in manifest["image"] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed images do not exist, e.g. {missing[:5]}")
    if task == "classification":
        unlabelled = manifest[manifest["label"] < 0]["name"].tolist()
        if unlabelled:
            raise ValueError(f"{len(unlabelled)} images have no row in {labels_path}, e.g. {unlabelled[:5]}")
    return manifest


class NextGenDataModule(UltrasoundDataModule):
    """Any dataset of the NextGen-UIA release layout.

    Args:
        root: Folder of the release.
        dataset: Dataset folder name (``BUSI``, ``LN-INT``, ``TN3K``, ...).
        task: ``classification`` or ``segmentation``.
        class_names: Class names in label order.
        image_size: Side length images are resized to.
        batch_size: Training batch size.
        eval_batch_size: Batch size for evaluation.
        num_workers: DataLoader workers.
        augment: Batched training augmentation.
        predict_split: Split used by ``predict``.
    """

    def __init__(
        self,
        root: str,
        dataset: str,
        task: Literal["classification", "segmentation"] = "classification",
        class_names: Sequence[str] = ("benign", "malignant"),
        image_size: int = 224,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: BatchAugment | None = None,
        predict_split: Literal["train", "val", "test"] = "test",
    ) -> None:
        super().__init__(task, class_names, image_size, batch_size, eval_batch_size, num_workers, augment,
                         predict_split)
        self.root = root
        self.dataset = dataset

    def read_manifest(self) -> pd.DataFrame:
        """Read the split files and labels of ``dataset``."""
        return read_nextgen_manifest(self.root, self.dataset, self.task)
