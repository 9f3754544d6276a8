"""BUSI: Breast Ultrasound Images, the benign / malignant / normal breast set with lesion masks.

Al-Dhabyani, Gomaa, Khaled, Fahmy, *Data in Brief* 28:104863, 2020, doi:10.1016/j.dib.2019.104863.

780 PNG images of 600 women (Baheya Hospital, Cairo, 2018): normal 133, benign 437, malignant 210. Published at
scholar.cu.edu.eg/?q=afahmy/pages/dataset; the usual mirror is kaggle.com/datasets/aryashah2k/breast-ultrasound-
images-dataset. Licence: not stated clearly (mirrors say CC BY-NC-SA 4.0 or "other"); check before redistributing.

Layout::

    Dataset_BUSI_with_GT/{benign,malignant,normal}/benign (1).png
                                                   benign (1)_mask.png
                                                   benign (1)_mask_1.png     extra lesion (17 images)

Quirks handled here: extra lesions are separate ``_mask_N`` files and are OR-merged into one mask written to the
cache (``<cache>/derived/busi/<hash>/``), each binarised by the loader's rule (:mod:`usvl.data.decode`: channel
maximum above half its maximum), so RGB, RGBA and {0, 1} masks merge correctly; normal images have empty masks.
There is no official split (``split`` is None) and no patient id. The set holds many duplicated images: the data
module treats each duplicate group as one patient when it assigns the splits, so no group spans splits. Known
problems the reader does not fix: 8 lesions in both benign and malignant, overlaid calipers.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from usvl.data.datamodule import UltrasoundDataModule
from usvl.data.decode import read_binary_mask
from usvl.data.manifest import make_manifest
from usvl.data.sources.common import derived_dir, file_key, is_image_file, not_found, save_png_atomic

log = logging.getLogger(__name__)

BUSI_URL = ("scholar.cu.edu.eg/?q=afahmy/pages/dataset (doi:10.1016/j.dib.2019.104863; mirror "
            "kaggle.com/datasets/aryashah2k/breast-ultrasound-images-dataset)")
BUSI_FOLDER = "Dataset_BUSI_with_GT"
BUSI_CLASSES = ("benign", "malignant", "normal")

_MASK_STEM = re.compile(r"^(?P<stem>.*?)_mask(?:_(?P<index>\d+))?$", re.IGNORECASE)


def busi_folder(root: str | Path) -> Path:
    """The ``Dataset_BUSI_with_GT`` folder: ``root`` itself or its child.

    Raises:
        DatasetNotFoundError: Neither holds ``benign/`` and ``malignant/``.
    """
    root = Path(root)
    for candidate in (root / BUSI_FOLDER, root):
        if (candidate / "benign").is_dir() and (candidate / "malignant").is_dir():
            return candidate
    missing = root / BUSI_FOLDER if root.name != BUSI_FOLDER else root / "benign"
    raise not_found(missing, "BUSI", BUSI_URL, f"{BUSI_FOLDER}/{{benign,malignant,normal}}/", root)


def merge_masks(paths: list[Path], target: Path) -> Path | None:
    """OR-merge several masks into one 0/255 PNG at ``target`` (reused when it exists).

    Masks of another size than the first readable one are resized to it (nearest). Unreadable masks are skipped
    with a warning; returns None when none can be read.
    """
    if target.is_file():
        return target
    merged: np.ndarray | None = None
    for path in paths:
        try:
            mask = read_binary_mask(path)
        except (OSError, ValueError) as error:
            log.warning("Skipping unreadable BUSI mask %s: %s", path, error)
            continue
        if merged is None:
            merged = mask
            continue
        if mask.shape != merged.shape:
            resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(merged.shape[::-1], Image.NEAREST)
            mask = np.asarray(resized) > 127
        merged |= mask
    if merged is None:
        return None
    return save_png_atomic(merged.astype(np.uint8) * 255, target)


def read_busi_manifest(root: str | Path, include_normal: bool = True) -> pd.DataFrame:
    """Read the BUSI release into a manifest.

    Args:
        root: ``Dataset_BUSI_with_GT`` or the folder that holds it.
        include_normal: Keep the normal class (label 2, empty masks); False keeps benign (0) and malignant (1).

    Returns:
        One row per image; ``name`` is ``<class>/<file name>``, ``label_name`` the class folder, ``mask`` the single
        mask or the merged one in the cache (None when the image has no mask), ``split`` and ``patient`` None.

    Raises:
        DatasetNotFoundError: The BUSI folder, or ``normal/`` with ``include_normal``, is missing.
    """
    folder = busi_folder(root)
    classes = BUSI_CLASSES if include_normal else BUSI_CLASSES[:2]
    rows: list[dict[str, Any]] = []
    for label, class_name in enumerate(classes):
        class_dir = folder / class_name
        if not class_dir.is_dir():
            raise not_found(class_dir, "BUSI", BUSI_URL, f"{BUSI_FOLDER}/{{benign,malignant,normal}}/", root)
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for path in sorted(class_dir.iterdir()):
            if not is_image_file(path):
                continue
            match = _MASK_STEM.match(path.stem)
            if match:
                masks.setdefault(match["stem"], []).append((int(match["index"] or 0), path))
            else:
                images[path.stem] = path
        for stem, image in sorted(images.items()):
            own = [path for _, path in sorted(masks.get(stem, []))]
            if len(own) > 1:
                target = derived_dir("busi", [file_key(p) for p in own]) / class_name / f"{stem}_mask.png"
                merged = merge_masks(own, target)
                mask = merged if merged is not None else own[0]
            else:
                mask = own[0] if own else None
            rows.append({
                "name": f"{class_name}/{image.name}",
                "image": str(image.resolve()),
                "mask": str(mask.resolve()) if mask is not None else None,
                "label": label,
                "label_name": class_name,
            })
        orphans = sorted(set(masks) - set(images))
        if orphans:
            log.warning("BUSI %s: %d masks without an image, e.g. %s", class_name, len(orphans), orphans[:3])
    return make_manifest(rows)


class BUSIDataModule(UltrasoundDataModule):
    """BUSI breast ultrasound: benign, malignant and (optionally) normal images with lesion masks.

    Al-Dhabyani et al., *Data in Brief* 2020, doi:10.1016/j.dib.2019.104863. No official split, so the base module
    assigns seeded, stratified splits. Licence unclear (see :mod:`usvl.data.sources.busi`).

    Args:
        root: ``Dataset_BUSI_with_GT`` or the folder that holds it.
        include_normal: Keep the normal class (class names ``benign, malignant, normal``); False gives the
            benign-vs-malignant task of the reference protocol (647 images).
        **kwargs: Arguments of :class:`~usvl.data.datamodule.UltrasoundDataModule` (``task``, ``image_size``,
            ``batch_size``, ...).
    """

    def __init__(self, root: str, include_normal: bool = True, **kwargs: Any) -> None:
        super().__init__(class_names=BUSI_CLASSES if include_normal else BUSI_CLASSES[:2], **kwargs)
        self.root = root
        self.include_normal = include_normal

    def prepare_data(self) -> None:
        """Merge the multi-lesion masks into the cache once (one process per node)."""
        self.read_manifest()

    def read_manifest(self) -> pd.DataFrame:
        """Read the class folders (merging multi-lesion masks)."""
        return read_busi_manifest(self.root, include_normal=self.include_normal)
