"""The manifest contract: what every dataset source hands to the data module and the checker.

A manifest is a DataFrame with one row per image and the columns :data:`MANIFEST_COLUMNS`:

* ``name``: unique per row (split files and reports key on it), usually the path relative to the dataset root.
* ``image``: the image's path (absolute path string). ``mask``: the mask's path, a list of paths (several masks of
  one image, OR-merged by the decoder), or None when absent.
* ``label``: an int class index, -1 when absent or unknown; ``label_name`` the raw label string of the source.
* ``split``: ``train``/``val``/``test`` from an official split, or None (assigned by the data module).
* ``patient``: a case id (str) or None; images of one patient never span splits.

Every reader (``read_<source>_manifest(root, **options)``) returns such a frame (build it with
:func:`make_manifest`), raises :class:`DatasetNotFoundError` for a missing root or required folder/file and
``ValueError`` (file and line) for an unparsable metadata file. Problems of single files (missing, unreadable,
unknown label, missing mask) stay in the manifest for the checker to report.

This module depends on nothing else in :mod:`usvl.data`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

MANIFEST_COLUMNS = ("name", "image", "mask", "label", "split", "patient", "label_name")
"""Columns of every manifest (``label_name`` is the raw label string of the source)."""

REQUIRED_COLUMNS = ("name", "image")
"""Columns a manifest must have; the others are added empty by :func:`normalise_manifest`."""

SPLITS = ("train", "val", "test")
"""The splits, in order."""

_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}


class DatasetNotFoundError(FileNotFoundError):
    """A real dataset's folder is missing or incomplete; the message says where to put it."""


def is_empty(value: Any) -> bool:
    """Whether a manifest cell is empty: None, NaN, pandas NA, ``""`` or an empty list/tuple."""
    if value is None:
        return True
    if isinstance(value, (list, tuple)):
        return len(value) == 0
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value) == ""
    if isinstance(value, float):
        return math.isnan(value)
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def cell_paths(cell: Any) -> list[str]:
    """The paths in an ``image``/``mask`` cell: none when empty, one for a path, several for a list."""
    if is_empty(cell):
        return []
    cells = cell if isinstance(cell, (list, tuple)) else [cell]
    return [os.fspath(p) if isinstance(p, os.PathLike) else str(p) for p in cells if not is_empty(p)]


def object_column(values: Sequence[object], index: pd.Index | None = None) -> pd.Series:
    """A column of Python objects with None (not NaN) where a value is empty (pandas would infer ``str``)."""
    return pd.Series([None if is_empty(v) else v for v in values], dtype=object, index=index)


def normalise_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """Copy of a manifest in the contract's form: every column present, empty cells None, labels int.

    ``mask``/``split``/``patient``/``label_name`` become object columns holding None where empty (absent ones are
    added), ``patient`` holds strings, ``label`` is an int column with -1 where empty. Names are not checked for
    uniqueness here (the data module refuses repeats, the checker reports them).

    Args:
        manifest: Rows with at least ``name`` and ``image``.

    Raises:
        ValueError: A ``split`` value is not one of :data:`SPLITS`.
    """
    out = manifest.copy().reset_index(drop=True)
    for column in ("mask", "split", "patient", "label_name"):
        values = out[column].tolist() if column in out.columns else [None] * len(out)
        out[column] = object_column(values, out.index)
    out["patient"] = object_column([None if is_empty(p) else str(p) for p in out["patient"]], out.index)
    labels = out["label"] if "label" in out.columns else pd.Series([-1] * len(out))
    out["label"] = pd.to_numeric(labels, errors="coerce").fillna(-1).astype("int64").values
    bad = sorted({s for s in out["split"] if not is_empty(s) and s not in SPLITS})
    if bad:
        raise ValueError(f"Unknown split values {bad}; expected one of {list(SPLITS)} or empty")
    return out


def make_manifest(rows: Iterable[Mapping[str, Any]], skipped: Sequence[tuple[str, str]] = ()) -> pd.DataFrame:
    """Build a manifest from row dicts (missing keys empty, ``label`` -1); see :func:`normalise_manifest`.

    Args:
        rows: One dict per image, keyed by :data:`MANIFEST_COLUMNS`.
        skipped: ``(name, reason)`` of files the reader skipped (e.g. a symlink loop), kept in
            ``manifest.attrs["skipped"]`` for the checker and the data module to report.

    Raises:
        ValueError: Two rows share a ``name``, or a ``split`` is unknown.
    """
    frame = pd.DataFrame([dict(row) for row in rows], columns=list(MANIFEST_COLUMNS))
    frame["name"] = object_column([None if is_empty(n) else str(n) for n in frame["name"]], frame.index)
    manifest = normalise_manifest(frame)
    duplicated = manifest["name"][manifest["name"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"Manifest names must be unique; repeated: {duplicated[:5]}")
    if skipped:
        manifest.attrs["skipped"] = [(str(name), str(reason)) for name, reason in skipped]
    return manifest


def skipped_files(manifest: pd.DataFrame) -> list[tuple[str, str]]:
    """``(name, reason)`` of the files the reader skipped (see :func:`make_manifest`)."""
    return list(manifest.attrs.get("skipped", []))


def normalise_split(value: str | None, where: str) -> str | None:
    """Map a split cell (``train``, ``Training``, ``valid``, ``testing``, ...) to one of :data:`SPLITS`.

    Returns:
        The split, or None for an empty cell.

    Raises:
        ValueError: Unknown split value; the message names ``where`` (file and line).
    """
    if value is None or not str(value).strip():
        return None
    split = _SPLIT_ALIASES.get(str(value).strip().lower())
    if split is None:
        raise ValueError(f"{where}: unknown split {value!r}; expected one of {sorted(set(_SPLIT_ALIASES))}")
    return split


def _integer(text: str) -> int | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


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
    value = _integer(text)
    if value is None or value < 0 or (names and value >= len(names)):
        return -1
    return value


def classes_from_labels(raw_labels: Iterable[str | None]) -> list[str] | None:
    """Class names for raw labels given as names: the distinct non-integer labels, sorted; None for integer labels.

    Used when no class names are given, so ``malignant``/``benign`` labels become classes
    ``['benign', 'malignant']`` instead of unknown labels.
    """
    texts = {str(raw).strip() for raw in raw_labels if raw is not None and str(raw).strip()}
    names = sorted(t for t in texts if _integer(t) is None)
    return names or None


def derive_class_names(manifest: pd.DataFrame) -> list[str]:
    """Class names in label order from a manifest's ``label``/``label_name`` (``str(label)`` when unnamed).

    Classes are the labels ``0..k`` up to the first unused label: a label after a gap (e.g. a stray ``7`` next to
    ``0`` and ``1``) is taken for an unknown label, not a class.
    """
    used = {int(v) for v in manifest["label"] if int(v) >= 0}
    count = 0
    while count in used:
        count += 1
    names = []
    for label in range(count):
        raw = manifest.loc[manifest["label"] == label, "label_name"].dropna()
        names.append(str(raw.mode().iloc[0]) if len(raw) else str(label))
    return names


__all__ = ["MANIFEST_COLUMNS", "REQUIRED_COLUMNS", "SPLITS", "DatasetNotFoundError", "cell_paths",
           "classes_from_labels", "derive_class_names", "is_empty", "label_index", "make_manifest",
           "normalise_manifest", "normalise_split", "object_column", "skipped_files"]
