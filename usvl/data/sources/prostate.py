"""Micro-ultrasound prostate segmentation (MicroSegNet; Jiang et al., *Comput. Med. Imaging Graph.* 2024, 102326).

75 patients (University of Florida, 29 MHz ExactVu micro-US guided biopsy), official split 55 train / 20 test
patients, 3-D NIfTI volumes with the prostate gland annotated by an expert (train: also a non-expert; test: also
a master's student, a medical student and a clinician). Published on Zenodo, doi:10.5281/zenodo.10475293; code
github.com/mirthAI/MicroSegNet. Licence: reported as CC BY 4.0 (check the Zenodo record).

Layout::

    Micro_Ultrasound_Prostate_Segmentation_Dataset/train/micro_ultrasound_scans/<scan>_<NN>.nii.gz
                                                   train/expert_annotations/<...>_<NN>.nii.gz
                                                   train/non_expert_annotations/<...>_<NN>.nii.gz
                                                   test/micro_ultrasound_scans/, test/expert_annotations/, ...

Scans and annotations are paired by their trailing number (MicroSegNet pairs them by sorted order). Each volume is
cut into 2-D slices along its last (nibabel) axis, i.e. the first axis of MicroSegNet's SimpleITK arrays; slices are
1372x962 (W x H), intensities pre-normalised to 0-254 (rescaled to 0-255 here). Slices are written once as PNG to
``<cache>/derived/prostate/<hash>/`` (downsampled by ``downsample``, 2 as in MicroSegNet) and reused afterwards.

**Split**: the 20 official test patients get ``split="test"``; the 55 training patients are left with ``split``
None, and the base data module (:func:`usvl.data.splits.assign_splits`) divides them into ``train`` and ``val`` at
the train:val ratio of ``split_fractions``, grouped by patient (``patient`` is the scan name), so no patient crosses
splits and the official test set is untouched.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image

from usvl.data.datamodule import UltrasoundDataModule
from usvl.data.manifest import make_manifest
from usvl.data.sources.common import derived_dir, file_key, not_found, save_png_atomic
from usvl.utils.atomic import write_text_atomic

log = logging.getLogger(__name__)

PROSTATE_URL = "zenodo.org, doi:10.5281/zenodo.10475293 (code: github.com/mirthAI/MicroSegNet)"
PROSTATE_FOLDER = "Micro_Ultrasound_Prostate_Segmentation_Dataset"
PROSTATE_LAYOUT = "{train,test}/{micro_ultrasound_scans,expert_annotations}/*.nii.gz"
SCANS = "micro_ultrasound_scans"

_TRAILING_NUMBER = re.compile(r"(\d+)$")


def prostate_folder(root: str | Path) -> Path:
    """The dataset folder (holding ``train/`` and ``test/``): ``root`` or its child.

    Raises:
        DatasetNotFoundError: Neither holds ``train/micro_ultrasound_scans`` and ``test/micro_ultrasound_scans``.
    """
    root = Path(root)
    for candidate in (root / PROSTATE_FOLDER, root):
        if (candidate / "train" / SCANS).is_dir() and (candidate / "test" / SCANS).is_dir():
            return candidate
    base = root / PROSTATE_FOLDER if (root / PROSTATE_FOLDER).is_dir() else root
    missing = base / "train" / SCANS if not (base / "train" / SCANS).is_dir() else base / "test" / SCANS
    raise not_found(missing, "the micro-US prostate dataset (MicroSegNet)", PROSTATE_URL,
                    f"{PROSTATE_FOLDER}/{PROSTATE_LAYOUT}", root)


def volume_stem(path: Path) -> str:
    """A NIfTI file name without ``.nii`` / ``.nii.gz``."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def list_volumes(folder: Path) -> list[Path]:
    """NIfTI files in ``folder``, sorted by name (empty when the folder is absent)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith((".nii", ".nii.gz")))


def pair_annotations(scans: list[Path], annotations: list[Path]) -> dict[Path, Path | None]:
    """Match each scan to the annotation with the same trailing number (or the same name); None when absent."""
    by_number: dict[str, Path] = {}
    by_name: dict[str, Path] = {}
    for path in annotations:
        stem = volume_stem(path)
        by_name[stem] = path
        match = _TRAILING_NUMBER.search(stem)
        if match:
            by_number.setdefault(str(int(match[1])), path)
    pairs: dict[Path, Path | None] = {}
    for scan in scans:
        stem = volume_stem(scan)
        match = _TRAILING_NUMBER.search(stem)
        pairs[scan] = by_name.get(stem) or (by_number.get(str(int(match[1]))) if match else None)
    return pairs


def to_uint8(volume: np.ndarray) -> np.ndarray:
    """Intensities to ``uint8``: 0-254 pre-normalised data scaled by 255/254, anything else min-max scaled."""
    volume = np.asarray(volume, dtype=np.float32)
    low, high = float(np.nanmin(volume)), float(np.nanmax(volume))
    if low >= 0 and high <= 255:
        scaled = volume * (255.0 / 254.0) if high <= 254 else volume
    else:
        scaled = (volume - low) / max(high - low, 1e-6) * 255.0
    return np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)


def _load_volume(path: Path) -> np.ndarray:
    import nibabel as nib

    data = np.asarray(nib.load(str(path)).dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {data.shape}")
    return data


def _slice_2d(volume: np.ndarray, z: int, downsample: int, nearest: bool) -> np.ndarray:
    plane = volume[:, :, z].T  # nibabel (x, y, z) -> (rows = y, cols = x)
    if downsample > 1:
        height, width = plane.shape
        size = (max(1, width // downsample), max(1, height // downsample))
        plane = np.asarray(Image.fromarray(plane).resize(size, Image.NEAREST if nearest else Image.BILINEAR))
    return plane


def slice_volume(scan: Path, annotation: Path | None, downsample: int) -> list[tuple[str, str | None]] | None:
    """Write the 2-D slices of a scan (and its annotation) as PNG into the cache; reuse them when present.

    Returns:
        ``(image_png, mask_png_or_None)`` per slice, or None when the scan cannot be read.
    """
    folder = derived_dir("prostate", file_key(scan), file_key(annotation), downsample)
    index_file = folder / "slices.json"
    if index_file.is_file():
        return [(image, mask) for image, mask in json.loads(index_file.read_text(encoding="utf-8"))]
    try:
        volume = to_uint8(_load_volume(scan))
    except Exception as error:  # nibabel raises many types for damaged files
        log.warning("Cannot read micro-US scan %s: %s", scan, error)
        return None
    labels = None
    if annotation is not None:
        try:
            labels = (_load_volume(annotation) > 0).astype(np.uint8) * 255
        except Exception as error:  # damaged annotation: slices keep no mask
            log.warning("Cannot read annotation %s: %s", annotation, error)
    stem = volume_stem(scan)
    slices = []
    for z in range(volume.shape[2]):
        image = save_png_atomic(_slice_2d(volume, z, downsample, nearest=False), folder / f"{stem}_{z:03d}.png")
        mask = None
        if labels is not None and z < labels.shape[2]:
            mask = save_png_atomic(_slice_2d(labels, z, downsample, nearest=True),
                                   folder / f"{stem}_{z:03d}_mask.png")
        slices.append((str(image), str(mask) if mask is not None else None))
    write_text_atomic(index_file, json.dumps(slices, ensure_ascii=False))
    return slices


def read_prostate_manifest(root: str | Path, annotation: str = "expert", downsample: int = 2,
                           slice_step: int = 1) -> pd.DataFrame:
    """Read the micro-US prostate volumes into a manifest of 2-D slices.

    Args:
        root: ``Micro_Ultrasound_Prostate_Segmentation_Dataset`` or the folder that holds it.
        annotation: Annotator of the training masks: ``expert`` or ``non_expert`` (folder
            ``train/<annotation>_annotations``). Test masks are always the expert ones (the reference standard).
        downsample: Integer downsampling of the stored slices (MicroSegNet stores them at 1/2).
        slice_step: Keep every ``slice_step``-th slice.

    Returns:
        One row per slice; ``name`` is ``<split>/<scan>/<slice>`` (``<split>`` the official ``train``/``test``
        folder), ``patient`` the scan name, ``split`` ``test`` for the official test patients and None for the
        training patients (train and val are carved from them by patient), ``label`` -1. A scan that cannot be
        read gives one row whose ``image`` is the volume file itself (the checker reports it) and whose ``mask``
        is None.

    Raises:
        DatasetNotFoundError: The scan folders or an annotation folder are missing.
    """
    folder = prostate_folder(root)
    if downsample < 1 or slice_step < 1:
        raise ValueError(f"downsample and slice_step must be >= 1, got {downsample} and {slice_step}")
    stems: dict[str, list[str]] = {}
    plan = []
    for split in ("train", "test"):
        annotator = annotation if split == "train" else "expert"
        annotation_dir = folder / split / f"{annotator}_annotations"
        if not annotation_dir.is_dir():
            raise not_found(annotation_dir, "the micro-US prostate dataset (MicroSegNet)", PROSTATE_URL,
                            f"{PROSTATE_FOLDER}/{PROSTATE_LAYOUT}", root)
        scans = list_volumes(folder / split / SCANS)
        pairs = pair_annotations(scans, list_volumes(annotation_dir))
        for scan in scans:
            stems.setdefault(volume_stem(scan), []).append(split)
            plan.append((split, scan, pairs[scan]))
    rows: list[dict[str, Any]] = []
    for split, scan, paired in plan:
        official = "test" if split == "test" else None
        stem = volume_stem(scan)
        patient = stem if len(stems[stem]) == 1 else f"{split}/{stem}"
        if paired is None:
            log.warning("Micro-US scan %s has no annotation; its slices have no mask", scan)
        slices = slice_volume(scan, paired, downsample)
        if slices is None:
            rows.append({"name": f"{split}/{stem}", "image": str(scan.resolve()), "split": official,
                         "patient": patient})
            continue
        for z in range(0, len(slices), slice_step):
            image, mask = slices[z]
            rows.append({"name": f"{split}/{stem}/{z:03d}", "image": image, "mask": mask, "split": official,
                         "patient": patient})
    return make_manifest(rows)


class ProstateDataModule(UltrasoundDataModule):
    """Micro-ultrasound prostate gland segmentation: 2-D slices of 3-D volumes, official 55/20 patient split.

    MicroSegNet, Jiang et al., CMIG 2024; Zenodo doi:10.5281/zenodo.10475293. Expert masks by default.

    Args:
        root: ``Micro_Ultrasound_Prostate_Segmentation_Dataset`` or the folder that holds it.
        annotation: Training masks from ``expert`` or ``non_expert`` annotators.
        downsample: Integer downsampling of the cached slices.
        slice_step: Keep every ``slice_step``-th slice.
        task: Only ``segmentation`` (the set has no class labels).
        class_names: Name(s) of the segmented structure; the text descriptions are looked up by them.
        **kwargs: Arguments of :class:`~usvl.data.datamodule.UltrasoundDataModule` (``image_size``,
            ``batch_size``, ...).
    """

    def __init__(self, root: str, annotation: Literal["expert", "non_expert"] = "expert", downsample: int = 2,
                 slice_step: int = 1, task: Literal["segmentation"] = "segmentation",
                 class_names: Sequence[str] = ("prostate",), **kwargs: Any) -> None:
        super().__init__(task=task, class_names=class_names, **kwargs)
        self.root = root
        self.annotation = annotation
        self.downsample = downsample
        self.slice_step = slice_step

    def prepare_data(self) -> None:
        """Cut the volumes into cached PNG slices once (Lightning runs this on one process per node)."""
        self.read_manifest()

    def read_manifest(self) -> pd.DataFrame:
        """Slice the volumes (once, into the cache) and list the slices."""
        return read_prostate_manifest(self.root, annotation=self.annotation, downsample=self.downsample,
                                      slice_step=self.slice_step)
