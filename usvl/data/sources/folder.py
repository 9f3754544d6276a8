"""A generic folder or CSV manifest, for private sets and anything else already on disk.

Meant for sets such as the LN-INT / LN-EXT lymph-node sets of NextGen-UIA, which are not public.

Folder layout::

    <root>/images/<name>.<ext>        any image extension, sub-folders allowed
    <root>/masks/<name>.<ext>         optional: same relative path and stem, any image extension
    <root>/labels.csv                 optional: header ``name,label`` (+ optional ``split``, ``patient``)

The image column of ``labels.csv`` may be called ``name``, ``image``, ``filename``, ``file`` or ``path`` (the first
of these found is used, and logged); it holds the image path relative to ``images/`` (with or without extension)
or its file name. ``label`` is a class name (mapped through ``class_names``) or an integer index; without
``class_names``, labels given as names define the classes (sorted, logged). ``split`` is ``train``/``val``/``test``
(or empty: assigned by the base module). A listed name with no image file keeps its row. An image-named symbolic
link that loops or points nowhere is skipped, logged and counted (``usvl data check`` lists it).

CSV manifest: ``root`` is a ``.csv`` file with a header holding the image path (``image``, ``path``, ``file`` or
``filename``) and optionally ``mask``, ``label``, ``split``, ``patient``, ``name``; paths are relative to the
CSV's folder (or absolute).

Licence and citation: those of your data.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from usvl.data.datamodule import UltrasoundDataModule
from usvl.data.manifest import (
    DatasetNotFoundError,
    classes_from_labels,
    label_index,
    make_manifest,
    normalise_split,
)
from usvl.data.sources.common import absolute, find_by_stem, has_image_extension, scan_images

log = logging.getLogger(__name__)

FOLDER_LAYOUT = "images/ (+ masks/ with the same stems, + labels.csv with header name,label[,split,patient])"

NAME_COLUMNS = ("name", "image", "filename", "file", "path")
"""Accepted headers of the image column of ``labels.csv``, in order of preference."""
PATH_COLUMNS = ("image", "path", "file", "filename")
"""Accepted headers of the image path column of a CSV manifest, in order of preference."""


def read_table(path: Path, one_of: Sequence[str]) -> tuple[str, list[tuple[int, dict[str, str]]]]:
    """Rows of a CSV with a header, and which of the ``one_of`` columns names the images.

    Returns:
        The first column of ``one_of`` the header holds (lower case), and the non-blank rows as
        ``(line number, {column: stripped value})``.

    Raises:
        ValueError: The file cannot be parsed, or holds none of ``one_of``; the message names file and line.
    """
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip().lower() for h in reader.fieldnames or []]
            column = next((c for c in one_of if c in header), None)
            if column is None:
                raise ValueError(f"{path}:1: the header {reader.fieldnames} has no image column; name it one of "
                                 f"{list(one_of)}")
            rows = []
            for row in reader:
                if None in row:
                    raise ValueError(f"{path}:{reader.line_num}: more fields than header columns")
                values = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
                if any(values.values()):
                    rows.append((reader.line_num, values))
    except csv.Error as error:
        raise ValueError(f"{path}: cannot parse CSV ({error})") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from error
    if column != one_of[0]:
        log.info("%s: image names taken from the column %r", path, column)
    return column, rows


def _class_names(class_names: Sequence[str] | None, raw_labels: list[str | None], where: Path) -> list[str] | None:
    """``class_names``, or the classes named by the labels when none are given (logged)."""
    if class_names is not None:
        return list(class_names)
    derived = classes_from_labels(raw_labels)
    if derived is not None:
        log.info("%s: no class names given; classes %s derived from the labels (sorted)", where, derived)
    return derived


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return absolute(path if path.is_absolute() else base / path)


def read_csv_manifest(path: Path, class_names: Sequence[str] | None) -> pd.DataFrame:
    """Read a CSV manifest (columns ``image`` [, ``mask``, ``label``, ``split``, ``patient``, ``name``]).

    Without ``class_names``, labels given as names define the classes (sorted).

    Raises:
        ValueError: The CSV is unparsable, lacks an image column, names an image twice, or has an unknown split.
    """
    column, table = read_table(path, one_of=PATH_COLUMNS)
    classes = _class_names(class_names, [values.get("label") for _, values in table], path)
    rows = []
    seen: dict[str, int] = {}
    for line, values in table:
        if not values.get(column):
            raise ValueError(f"{path}:{line}: empty {column!r}")
        name = values.get("name") or values[column]
        if name in seen:
            raise ValueError(f"{path}:{line}: {name!r} is listed again (first on line {seen[name]})")
        seen[name] = line
        mask = values.get("mask")
        raw = values.get("label") or None
        rows.append({
            "name": name,
            "image": str(_resolve(path.parent, values[column])),
            "mask": str(_resolve(path.parent, mask)) if mask else None,
            "label": label_index(raw, classes),
            "label_name": raw,
            "split": normalise_split(values.get("split"), f"{path}:{line}"),
            "patient": values.get("patient") or None,
        })
    return make_manifest(rows)


def read_folder_manifest(root: str | Path, class_names: Sequence[str] | None = None, images: str = "images",
                         masks: str = "masks", labels: str = "labels.csv") -> pd.DataFrame:
    """Read an ``images/`` + ``masks/`` + ``labels.csv`` folder, or a CSV manifest file, into a manifest.

    Args:
        root: The folder, or a ``.csv`` manifest file.
        class_names: Class names in label order; string labels are mapped to their index, integer labels kept
            when in range. Unknown labels give -1 (with ``label_name`` set). None: labels given as names define
            the classes, sorted.
        images: Image sub-folder name.
        masks: Mask sub-folder name.
        labels: Label file name.

    Raises:
        DatasetNotFoundError: ``root`` (or its ``images/`` folder) does not exist.
        ValueError: The CSV is unparsable, lacks a required column, repeats a name or has an unknown split.
    """
    root = Path(root)
    if root.suffix.lower() == ".csv":
        if not root.is_file():
            raise DatasetNotFoundError(f"{root} does not exist. Write a CSV manifest with a header holding 'image' "
                                       "(and optionally mask, label, split, patient), paths relative to the CSV.")
        return read_csv_manifest(root, class_names)
    image_dir = root / images
    if not image_dir.is_dir():
        raise DatasetNotFoundError(f"{image_dir} does not exist. Put your images under {root} so that it holds "
                                   f"{FOLDER_LAYOUT}, or point root at a CSV manifest.")
    found, skipped = scan_images(image_dir, recursive=True)
    unusable = {image_dir / name for name, _ in skipped}
    by_key: dict[str, Path] = {}
    for image in found:
        relative = image.relative_to(image_dir).as_posix()
        for key in (relative, relative.rsplit(".", 1)[0], image.name, image.stem):
            by_key.setdefault(key, image)
    table: dict[Path, tuple[int, dict[str, str]]] = {}
    label_path = root / labels
    if label_path.is_file():
        column, listed = read_table(label_path, one_of=NAME_COLUMNS)
        for line, values in listed:
            image = by_key.get(values[column])
            if image is None:
                image = image_dir / values[column]
                if image in unusable:
                    continue  # skipped and counted by scan_images
                if not has_image_extension(image):
                    log.warning("%s:%d: no image named %r in %s", label_path, line, values[column], image_dir)
            if image in table:
                raise ValueError(f"{label_path}:{line}: {values[column]!r} is listed again (first on line "
                                 f"{table[image][0]})")
            table[image] = (line, values)
    classes = _class_names(class_names, [values.get("label") for _, values in table.values()], label_path)
    on_disk = set(found)
    rows = []
    for image in found + [p for p in table if p not in on_disk]:
        line, values = table.get(image, (0, {}))
        relative = image.relative_to(image_dir)
        mask = find_by_stem((root / masks / relative).parent, relative.stem)
        raw = values.get("label") or None
        where = f"{label_path}:{line}"
        rows.append({
            "name": relative.as_posix(),
            "image": str(absolute(image)),
            "mask": str(absolute(mask)) if mask is not None else None,
            "label": label_index(raw, classes),
            "label_name": raw,
            "split": normalise_split(values.get("split"), where),
            "patient": values.get("patient") or None,
        })
    if skipped:
        log.warning("%s: skipped %d unreadable image link(s): %s", image_dir, len(skipped),
                    ", ".join(f"{name} ({reason})" for name, reason in skipped))
    return make_manifest(rows, skipped=skipped)


class FolderDataModule(UltrasoundDataModule):
    """Images (+ masks, + labels) from a plain folder or a CSV manifest; for private sets such as LN-INT/LN-EXT.

    Splits given in ``labels.csv`` or the CSV manifest are kept; the base module assigns the rest. A folder with
    only test images, or with no split at all, is an external test set for ``usvl test``/``validate``/``predict``
    (every image evaluated; ``eval_unsplit="assign"`` splits it as ``fit`` does instead, to test the test split of
    a folder that was trained on, as does passing the run's ``splits.csv`` as ``split_file``).

    Args:
        root: The folder (``images/``, ``masks/``, ``labels.csv``) or a ``.csv`` manifest file.
        images: Image sub-folder name.
        masks: Mask sub-folder name.
        labels: Label file name.
        **kwargs: Arguments of :class:`~usvl.data.datamodule.UltrasoundDataModule` (``task``, ``class_names``,
            ``image_size``, ``batch_size``, ...); ``class_names`` also maps string labels.
    """

    default_eval_unsplit = "all"

    def __init__(self, root: str, images: str = "images", masks: str = "masks", labels: str = "labels.csv",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.images = images
        self.masks = masks
        self.labels = labels

    def read_manifest(self) -> pd.DataFrame:
        """Read the folder or CSV manifest, mapping labels through ``class_names``."""
        return read_folder_manifest(self.root, class_names=self.class_names, images=self.images, masks=self.masks,
                                    labels=self.labels)
