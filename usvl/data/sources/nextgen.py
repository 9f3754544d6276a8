"""The NextGen-UIA release layout (also what the synthetic generator writes).

Layout (Qu et al., arXiv 2506.08849, github.com/jinggqu/NextGen-UIA, release ``0.1``)::

    <root>/all/images/<name>            every image of every dataset, one flat folder
    <root>/all/masks/<name>             binary mask with the same file name
    <root>/classification/<DS>/labels.csv       no header: ``name,int_label`` (0 benign, 1 malignant)
    <root>/classification/<DS>/{train,val,test}.txt
    <root>/segmentation/<DS>/{train,val,test}.txt

The public release holds BUSI, DDTI, TN3K and Prostate; LN-INT and LN-EXT are private (collaboration agreement).
Licence: that of each original dataset. Please cite the paper and the original datasets when you use the release.
The manifest it gives follows :mod:`usvl.data.manifest`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from usvl.data.datamodule import UltrasoundDataModule
from usvl.data.manifest import SPLITS, label_index, make_manifest
from usvl.data.sources.common import not_found, read_name_label_csv

NEXTGEN_URL = "github.com/jinggqu/NextGen-UIA (release 0.1)"
TASKS = ("classification", "segmentation")


def nextgen_datasets(root: str | Path) -> list[str]:
    """The dataset folders of a release (under ``classification/`` or ``segmentation/``), sorted; empty if none."""
    root = Path(root)
    return sorted({p.name for task in TASKS if (root / task).is_dir() for p in (root / task).iterdir()
                   if p.is_dir() and not p.name.startswith(".")})


def read_name_list(path: Path) -> list[str]:
    """The image names of a release split file (``train.txt`` ...), one per line (blank lines ignored)."""
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def read_nextgen_manifest(root: str | Path, dataset: str, task: str = "classification",
                          class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Read one dataset of the release layout into a manifest.

    Args:
        root: Folder holding ``all/``, ``classification/`` and ``segmentation/``.
        dataset: Dataset folder name, e.g. ``BUSI``.
        task: Which split files to read: ``classification`` or ``segmentation``.
        class_names: Class names, to map labels given as names and to flag out-of-range integers as unknown
            (-1); None keeps every non-negative integer label.

    Returns:
        The manifest (official splits from the split files; ``label`` -1 for images without a labels row).

    Raises:
        DatasetNotFoundError: The dataset folder or one of its split files is missing.
        ValueError: ``labels.csv`` has a malformed row (file and line in the message).
    """
    root = Path(root)
    split_dir = root / task / dataset
    if not split_dir.is_dir():
        error = not_found(split_dir, f"the NextGen-UIA release (dataset {dataset})", NEXTGEN_URL,
                          f"all/images, all/masks and {task}/{dataset}/{{train,val,test}}.txt", root)
        found = nextgen_datasets(root)
        raise type(error)(f"{error} Datasets found in {root}: {', '.join(found) if found else 'none'}.")
    labels_path = root / "classification" / dataset / "labels.csv"
    labels = read_name_label_csv(labels_path) if labels_path.is_file() else {}
    rows = []
    for split in SPLITS:
        split_file = split_dir / f"{split}.txt"
        if not split_file.is_file():
            raise not_found(split_file, f"the NextGen-UIA release (dataset {dataset})", NEXTGEN_URL,
                            f"{task}/{dataset}/{{train,val,test}}.txt", root)
        for name in read_name_list(split_file):
            mask = root / "all" / "masks" / name
            raw = labels.get(name)
            rows.append({
                "name": name,
                "image": str(root / "all" / "images" / name),
                "mask": str(mask) if mask.is_file() else None,
                "label": label_index(raw, class_names),
                "label_name": raw,
                "split": split,
            })
    return make_manifest(rows)


class NextGenDataModule(UltrasoundDataModule):
    """Any dataset of the NextGen-UIA release layout.

    Qu et al., arXiv 2506.08849; github.com/jinggqu/NextGen-UIA, release ``0.1``. Licence and citation: those of
    the original dataset (BUSI, DDTI, TN3K, micro-US prostate).

    Args:
        root: Folder of the release.
        dataset: Dataset folder name (``BUSI``, ``LN-INT``, ``TN3K``, ...).
        **kwargs: Arguments of :class:`~usvl.data.datamodule.UltrasoundDataModule` (``task``, ``class_names``,
            ``image_size``, ``batch_size``, ...).
    """

    def __init__(self, root: str, dataset: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.dataset = dataset

    def read_manifest(self) -> pd.DataFrame:
        """Read the split files and labels of ``dataset``."""
        return read_nextgen_manifest(self.root, self.dataset, self.task, self.class_names)


__all__ = ["NEXTGEN_URL", "NextGenDataModule", "nextgen_datasets", "read_name_list",
           "read_nextgen_manifest"]
