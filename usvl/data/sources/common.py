"""Helpers every source reader shares: listing image files, finding masks, cache folders for derived files, errors.

Listing skips, names and counts what cannot be read as a file: a symbolic link that loops (``a -> b -> a``) or
points nowhere is logged with its path and returned by :func:`scan_images`, so a reader can hand it to
:func:`usvl.data.manifest.make_manifest` (``skipped``) and ``usvl data check`` reports it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from usvl.data.dicom import DICOM_EXTENSIONS
from usvl.data.manifest import DatasetNotFoundError
from usvl.paths import cache_dir
from usvl.utils.atomic import atomic_output

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
"""File extensions (lower case) read as images (and as masks)."""

INPUT_EXTENSIONS = IMAGE_EXTENSIONS | DICOM_EXTENSIONS
"""File extensions (lower case) listed as input images: the image formats and DICOM (``.dcm``, ``.dicom``)."""

DERIVED_VERSION = 1
"""Bump to invalidate every derived file (rendered, merged or sliced masks and images) in the cache."""


def not_found(missing: Path, dataset: str, published: str, layout: str, root: Path | str) -> DatasetNotFoundError:
    """A :class:`~usvl.data.manifest.DatasetNotFoundError` naming what is missing and where the data goes.

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


def has_image_extension(path: Path) -> bool:
    """A visible name with an input image extension, DICOM included (the file itself is not looked at)."""
    return path.suffix.lower() in INPUT_EXTENSIONS and not path.name.startswith(".")


def is_image_file(path: Path) -> bool:
    """A visible file with an image extension."""
    return has_image_extension(path) and path.is_file()


def unusable_link(path: Path) -> str | None:
    """Why a symbolic link cannot be read (``symlink loop``, ``broken symlink``), or None for anything else."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return "symlink loop"
    except OSError as error:
        return "symlink loop" if "loop" in str(error).lower() else "broken symlink"
    return None


def absolute(path: Path) -> Path:
    """``path`` resolved (symbolic links followed), or made absolute when it cannot be resolved (a loop)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return path.absolute()


def _walk(folder: Path, recursive: bool) -> Iterator[Path]:
    return folder.rglob("*") if recursive else folder.iterdir()


def scan_images(folder: Path, recursive: bool = False) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files in ``folder`` (optionally below it), and the image-named links skipped as unreadable.

    Returns:
        The image files sorted by relative path, and ``(relative path, reason)`` of every skipped link (each
        logged as a warning with its path).
    """
    images, skipped = [], []
    for path in _walk(folder, recursive):
        if not has_image_extension(path):
            continue
        reason = unusable_link(path)
        if reason is not None:
            relative = path.relative_to(folder).as_posix()
            log.warning("Skipping %s: %s (-> %s)", path, reason, os.readlink(path))
            skipped.append((relative, reason))
        elif path.is_file():
            images.append(path)
    images.sort(key=lambda p: p.relative_to(folder).as_posix())
    return images, sorted(skipped)


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (optionally below it), sorted by relative path; unreadable links are logged."""
    return scan_images(folder, recursive)[0]


def read_name_label_csv(path: Path) -> dict[str, str]:
    """Raw labels of a headerless ``name,label`` CSV (a first line ``name,label``/``class``/``category`` is a header).

    The label is what follows the last comma, so names may hold commas.

    Raises:
        ValueError: A non-blank row has no comma; the message names the file and line.
    """
    labels: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        name, comma, value = line.strip().rpartition(",")
        if not comma or not name.strip():
            raise ValueError(f"{path}:{number}: expected 'name,label', got {line!r}")
        if number == 1 and value.strip().lower() in ("label", "class", "category"):
            continue
        labels[name.strip()] = value.strip()
    return labels


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
        return [str(absolute(path)), None, None]
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def derived_dir(source: str, *key: Any) -> Path:
    """Folder in the cache for files derived from a source's inputs, keyed by a hash of ``key``.

    ``<cache>/derived/<source>/<sha256(key)[:16]>``; the folder is not created.
    """
    payload = json.dumps([DERIVED_VERSION, *key], sort_keys=True, default=str, ensure_ascii=False)
    return cache_dir() / "derived" / source / hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def save_png_atomic(array: np.ndarray, path: Path) -> Path:
    """Write a ``uint8`` array as PNG through a temporary file, so readers never see a partial file."""
    with atomic_output(path) as temporary:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(temporary, format="PNG")
    return path


__all__ = ["DERIVED_VERSION", "IMAGE_EXTENSIONS", "INPUT_EXTENSIONS", "absolute", "derived_dir", "file_key",
           "find_by_stem", "has_image_extension", "is_image_file", "list_images", "not_found", "read_name_label_csv",
           "save_png_atomic", "scan_images", "unusable_link"]
