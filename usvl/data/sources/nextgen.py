"""The NextGen-UIA release layout (also what the synthetic generator writes) and the helpers every reader shares.

Layout (Qu et al., arXiv 2506.08849, github.com/jinggqu/NextGen-UIA, release ``0.1``)::

    <root>/all/images/<name>            every image of every dataset, one flat folder
    <root>/all/masks/<name>             binary mask with the same file name
    <root>/classification/<DS>/labels.csv       no header: ``name,int_label`` (0 benign, 1 malignant)
    <root>/classification/<DS>/{train,val,test}.txt
    <root>/segmentation/<DS>/{train,val,test}.txt

The public release holds BUSI, DDTI, TN3K and Prostate; LN-INT and LN-EXT are private (collaboration agreement).
Licence: that of each original dataset. Please cite the paper and the original datasets when you use the release.

**Manifest contract** (every ``read_<source>_manifest(root, **options)``): a DataFrame with the columns
:data:`MANIFEST_COLUMNS`; ``image``/``mask`` absolute path strings (``mask`` None when absent), ``name`` unique,
``label`` an int (-1 when absent or unknown) with the raw source string in ``label_name``, ``split`` from an official
split or None, ``patient`` a case id or None. Readers raise :class:`DatasetNotFoundError` for a missing root or
required folder/file and ``ValueError`` (file and line) for an unparsable metadata file; problems of single files
(missing, unreadable, unknown label, missing mask) are left in the manifest for the checker to report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from usvl.data.datamodule import SPLITS, UltrasoundDataModule
from usvl.data.transforms import binarise_mask
from usvl.paths import cache_dir

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("name", "image", "mask", "label", "split", "patient", "label_name")
"""Columns of every source manifest (``label_name`` is the raw label string of the source)."""

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
"""File extensions (lower case) read as images."""

DERIVED_VERSION = 1
"""Bump to invalidate every derived file (rendered, merged or sliced masks and images) in the cache."""

NEXTGEN_URL = "github.com/jinggqu/NextGen-UIA (release 0.1)"

_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}


class DatasetNotFoundError(FileNotFoundError):
    """A real dataset's folder is missing or incomplete; the message says where to put it."""


# ---------------------------------------------------------------------------------------------------------------------
# Helpers shared by the source readers


def not_found(missing: Path, dataset: str, published: str, layout: str, root: Path | str) -> DatasetNotFoundError:
    """A :class:`DatasetNotFoundError` naming what is missing, where the data goes and where it is published.

    Args:
        missing: The folder or file that does not exist.
        dataset: Human name of the dataset.
        published: Where it is published (URL or DOI).
        layout: The expected layout under ``root``, one line.
        root: The root the user gave.
    """
    return DatasetNotFoundError(
        f"{missing} does not exist. Put {dataset} (published at {published}) under {root} so that it holds "
        f"{layout}, or pass --data.init_args.root <folder>."
    )


def make_manifest(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a manifest with the contract's columns and types from row dicts.

    Missing keys default to None (``label`` to -1). String columns are ``object`` columns holding ``str`` or
    ``None`` (not NaN), ``label`` is ``int64``.

    Raises:
        ValueError: Two rows share a ``name``.
    """
    rows = list(rows)
    data: dict[str, pd.Series] = {}
    for column in MANIFEST_COLUMNS:
        if column == "label":
            values = [int(row.get("label", -1)) for row in rows]
            data[column] = pd.Series(values, dtype="int64")
        else:
            values = [row.get(column) for row in rows]
            data[column] = pd.Series([None if v is None else str(v) for v in values], dtype=object)
    manifest = pd.DataFrame(data, columns=list(MANIFEST_COLUMNS))
    duplicated = manifest["name"][manifest["name"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"Manifest names must be unique; repeated: {duplicated[:5]}")
    return manifest


def is_image_file(path: Path) -> bool:
    """A visible file with an image extension."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (optionally below it), sorted by relative path."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in pattern if is_image_file(p)), key=lambda p: p.relative_to(folder).as_posix())


def find_by_stem(folder: Path, stem: str) -> Path | None:
    """The image in ``folder`` whose stem is ``stem`` (any image extension), preferring PNG; None if absent."""
    if not folder.is_dir():
        return None
    candidates = [folder / f"{stem}{ext}" for ext in (".png", ".PNG")]
    candidates += sorted(p for p in folder.glob(f"{_glob_escape(stem)}.*")
                         if p.stem == stem and p.suffix.lower() in IMAGE_EXTENSIONS)
    return next((p for p in candidates if p.is_file()), None)


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def file_key(path: Path | str | None) -> list[Any]:
    """Identity of a file for cache keys: absolute path, size and modification time (None parts when absent)."""
    if path is None:
        return [None]
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return [str(path.resolve()), None, None]
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def derived_dir(source: str, *key: Any) -> Path:
    """Folder in the cache for files derived from a source's inputs, keyed by a hash of ``key``.

    ``<cache>/derived/<source>/<sha256(key)[:16]>``; the folder is not created.
    """
    payload = json.dumps([DERIVED_VERSION, *key], sort_keys=True, default=str, ensure_ascii=False)
    return cache_dir() / "derived" / source / hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def save_png_atomic(array: np.ndarray, path: Path) -> Path:
    """Write a ``uint8`` array as PNG through a temporary file, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(temporary)
    temporary.replace(path)
    return path


def binary_mask(path: Path | str) -> np.ndarray:
    """Decode a mask as a boolean array by the loader's rule (:mod:`usvl.data.transforms`).

    The value of a pixel is the maximum over the colour channels (the alpha channel only when the colour is empty
    and the alpha is not constant), thresholded at half the mask's own maximum: {0, 1}, {0, 255}, grey,
    RGB and RGBA masks all binarise alike.

    Raises:
        OSError: The file cannot be decoded.
    """
    with Image.open(path) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
    if image.mode == "P":
        image = image.convert("RGBA")
    elif image.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "F"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        values = array
    else:
        has_alpha = image.mode in ("LA", "RGBA")
        values = array[..., :-1].max(axis=-1) if has_alpha else array.max(axis=-1)
        if has_alpha and not values.any() and array[..., -1].min() != array[..., -1].max():
            values = array[..., -1]
    return binarise_mask(values)


def normalise_split(value: str | None, where: str) -> str | None:
    """Map a split string to ``train``/``val``/``test`` (None for empty).

    Raises:
        ValueError: Unknown split value; the message names ``where`` (file and line).
    """
    if value is None or not str(value).strip():
        return None
    split = _SPLIT_ALIASES.get(str(value).strip().lower())
    if split is None:
        raise ValueError(f"{where}: unknown split {value!r}; expected one of {sorted(set(_SPLIT_ALIASES))}")
    return split


def label_index(raw: str | None, class_names: Sequence[str] | None) -> int:
    """The class index of a raw label string, -1 when empty or unknown.

    A class name (exact, then case-insensitive) maps to its index; an integer string maps to itself when it is a
    valid index (any non-negative integer when ``class_names`` is None).
    """
    if raw is None:
        return -1
    text = str(raw).strip()
    if not text:
        return -1
    names = list(class_names or [])
    if text in names:
        return names.index(text)
    lowered = [n.lower() for n in names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    try:
        number = float(text)
    except ValueError:
        return -1
    if not number.is_integer():
        return -1
    value = int(number)
    if value < 0 or (names and value >= len(names)):
        return -1
    return value


# ---------------------------------------------------------------------------------------------------------------------
# The release layout


def read_split_file(path: Path) -> list[str]:
    """File names listed one per line (blank lines ignored)."""
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def read_labels_csv(path: Path) -> dict[str, str]:
    """Headerless ``name,label`` rows as raw label strings.

    Raises:
        ValueError: A non-blank row has no comma; the message names the file and line.
    """
    labels = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        name, comma, value = line.rpartition(",")
        if not comma or not name.strip():
            raise ValueError(f"{path}:{number}: expected 'name,label', got {line!r}")
        labels[name.strip()] = value.strip()
    return labels


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
        raise not_found(split_dir, f"the NextGen-UIA release (dataset {dataset})", NEXTGEN_URL,
                        f"all/images, all/masks and {task}/{dataset}/{{train,val,test}}.txt", root)
    labels_path = root / "classification" / dataset / "labels.csv"
    labels = read_labels_csv(labels_path) if labels_path.is_file() else {}
    rows = []
    for split in SPLITS:
        split_file = split_dir / f"{split}.txt"
        if not split_file.is_file():
            raise not_found(split_file, f"the NextGen-UIA release (dataset {dataset})", NEXTGEN_URL,
                            f"{task}/{dataset}/{{train,val,test}}.txt", root)
        for name in read_split_file(split_file):
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


__all__ = ["DERIVED_VERSION", "DatasetNotFoundError", "IMAGE_EXTENSIONS", "MANIFEST_COLUMNS", "NextGenDataModule",
           "binary_mask", "derived_dir", "file_key", "find_by_stem", "is_image_file", "label_index", "list_images",
           "make_manifest", "normalise_split", "not_found", "read_labels_csv", "read_nextgen_manifest",
           "read_split_file", "save_png_atomic"]
