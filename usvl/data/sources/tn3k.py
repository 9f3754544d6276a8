"""TN3K: Thyroid Nodule 3K, thyroid nodule masks with benign/malignant labels and an official test set.

Gong et al., "Multi-task learning for thyroid nodule segmentation with thyroid region prior", ISBI 2021; TRFE+,
*Comput. Biol. Med.* 2023, 106389.

3493 images of 2421 patients with nodule masks, split 2879 train-val / 614 test, with five train/val folds.
Published with the TRFE-Net code: github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation (also
huggingface.co/datasets/haifan-gong/TN3K). Benign/malignant labels (``label4trainval.csv``, ``label4test.csv``) come
from the ACL repository, github.com/chenghui-666/ACL. Licence: not stated for the data (TRFE code: MIT).

Layout::

    tn3k/trainval-image/0000.jpg ...   trainval-mask/0000.jpg ...   (JPEG masks: thresholded by the loader)
    tn3k/test-image/0000.jpg ...       test-mask/0000.jpg ...
    tn3k/tn3k-trainval-fold{0..4}.json  {"train": [indices], "val": [indices]} into the train-val images sorted by
                                        their integer name (TRFE's convention)
    tn3k/label4trainval.csv, label4test.csv   headerless ``0000.jpg,0`` (0 benign, 1 malignant)

Train and val come from the fold file (option ``fold``), test from the test folder. With ``fold=None`` the train-val
images get ``split`` None and the base module divides them into train and val (seeded, stratified). There is no
patient id in the release.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from usvl.data.datamodule import UltrasoundDataModule
from usvl.data.manifest import label_index, make_manifest
from usvl.data.sources.common import find_by_stem, list_images, not_found, read_name_label_csv

log = logging.getLogger(__name__)

TN3K_URL = ("github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation (labels: "
            "github.com/chenghui-666/ACL)")
TN3K_CLASSES = ("benign", "malignant")
TN3K_LAYOUT = "trainval-image/, trainval-mask/, test-image/, test-mask/, tn3k-trainval-fold<k>.json, label4*.csv"


def tn3k_folder(root: str | Path) -> Path:
    """The folder holding ``trainval-image/``: ``root`` itself or its ``tn3k`` child.

    Raises:
        DatasetNotFoundError: Neither holds ``trainval-image/`` and ``test-image/``.
    """
    root = Path(root)
    for candidate in (root, root / "tn3k", root / "TN3K"):
        if (candidate / "trainval-image").is_dir() and (candidate / "test-image").is_dir():
            return candidate
    missing = "test-image" if (root / "trainval-image").is_dir() else "trainval-image"
    raise not_found(root / missing, "TN3K", TN3K_URL, TN3K_LAYOUT, root)


def sort_key(path: Path) -> tuple[int, int, str]:
    """TRFE's order: integer names first, by value; any other name after them, by name."""
    try:
        return (0, int(path.stem), path.name)
    except ValueError:
        return (1, 0, path.name)


def read_fold_file(path: Path, count: int) -> dict[int, str]:
    """Map train-val indices to ``train``/``val`` from a fold JSON.

    Raises:
        ValueError: The file is not valid JSON, lacks ``train``/``val`` lists, or an index is out of range.
    """
    try:
        folds = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error
    if not isinstance(folds, dict) or not all(isinstance(folds.get(k), list) for k in ("train", "val")):
        raise ValueError(f"{path}:1: expected an object with 'train' and 'val' index lists")
    splits: dict[int, str] = {}
    for split in ("train", "val"):
        for index in folds[split]:
            if not isinstance(index, int) or not 0 <= index < count:
                raise ValueError(f"{path}: {split} index {index!r} is outside 0..{count - 1} "
                                 f"({count} train-val images)")
            splits[index] = split
    return splits


def read_tn3k_manifest(root: str | Path, fold: int | None = 0) -> pd.DataFrame:
    """Read TN3K into a manifest.

    Args:
        root: The ``tn3k`` folder or its parent.
        fold: Train/val fold (``tn3k-trainval-fold<fold>.json``); None leaves the train-val images' ``split``
            empty, for the base module to divide into train and val.

    Returns:
        One row per image; ``name`` is ``trainval-image/0000.jpg`` or ``test-image/0000.jpg``, ``label`` from the
        label CSVs (-1 when they are absent or the label is unknown), ``patient`` None.

    Raises:
        DatasetNotFoundError: The image folders or the fold file are missing.
        ValueError: A label CSV or the fold file cannot be parsed.
    """
    folder = tn3k_folder(root)
    trainval = sorted(list_images(folder / "trainval-image"), key=sort_key)
    splits: dict[int, str] = {}
    if fold is not None:
        fold_file = folder / f"tn3k-trainval-fold{fold}.json"
        if not fold_file.is_file():
            raise not_found(fold_file, "TN3K", TN3K_URL, TN3K_LAYOUT, root)
        splits = read_fold_file(fold_file, len(trainval))
        unassigned = len(trainval) - len(splits)
        if unassigned:
            log.warning("%d TN3K train-val images are in neither list of %s; their split is left open",
                        unassigned, fold_file.name)
    rows: list[dict[str, Any]] = []
    for group, images in (("trainval", trainval), ("test", sorted(list_images(folder / "test-image"),
                                                                      key=sort_key))):
        label_path = folder / f"label4{group}.csv"
        labels = read_name_label_csv(label_path) if label_path.is_file() else {}
        by_stem = {Path(name).stem: raw for name, raw in labels.items()}
        for index, image in enumerate(images):
            mask = find_by_stem(folder / f"{group}-mask", image.stem)
            raw = labels.get(image.name, by_stem.get(image.stem))
            if group == "test":
                split = "test"
            else:
                split = splits.get(index)
            rows.append({
                "name": f"{group}-image/{image.name}",
                "image": str(image.resolve()),
                "mask": str(mask.resolve()) if mask is not None else None,
                "label": label_index(raw, TN3K_CLASSES),
                "label_name": raw,
                "split": split,
            })
    return make_manifest(rows)


class TN3KDataModule(UltrasoundDataModule):
    """TN3K thyroid nodules: masks, benign/malignant labels, the official train-val/test split and 5 folds.

    Gong et al., ISBI 2021 (TRFE-Net repository); labels from the ACL repository.

    Args:
        root: The ``tn3k`` folder or its parent.
        fold: Train/val fold file to use (0-4); None leaves ``val`` to the base module.
        **kwargs: Arguments of :class:`~usvl.data.datamodule.UltrasoundDataModule` (``task``, ``image_size``,
            ``batch_size``, ...).
    """

    def __init__(self, root: str, fold: int | None = 0, **kwargs: Any) -> None:
        super().__init__(class_names=TN3K_CLASSES, **kwargs)
        self.root = root
        self.fold = fold

    def read_manifest(self) -> pd.DataFrame:
        """Read the image folders, the fold file and the label CSVs."""
        return read_tn3k_manifest(self.root, fold=self.fold)
