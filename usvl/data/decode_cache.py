"""A disk cache of decoded, resized ``uint8`` arrays, so later runs and epochs do not decode the files again.

One entry per (split, size, with_masks): ``<identity>-<key>.images.npy`` (``uint8 [N, 1, S, S]``), optionally
``<identity>-<key>.masks.npy``, and ``<identity>-<key>.json`` (names, kept manifest positions, skipped rows),
under ``usvl.paths.cache_dir() / "decoded"``.

* ``key`` hashes the decoder version, ``size``, ``with_masks`` and, per row, the image path and the mask path(s)
  with each file's size and ``mtime_ns`` (absolute paths). Touching, rewriting or deleting any file changes
  the key, so the entry is not used (a rewrite within the file system's timestamp resolution that keeps the
  size is not noticed).
* ``identity`` hashes the same without the file stamps; when an entry is written, older entries with the same
  identity (stale versions of this split) are deleted, so invalidation does not grow the cache.
* Files are written atomically (:mod:`usvl.utils.atomic`), arrays first and the JSON last, so a reader sees a
  complete entry or none. A lock file per split (:meth:`DecodeCache.exclusive`) lets one process decode while
  the others wait for its entry.
* Arrays are read with ``np.load(mmap_mode="r")`` and copied into memory, so the dataset does not depend on the
  files afterwards (and pickles cheaply into DataLoader workers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from usvl.data.decode import DECODER_VERSION
from usvl.data.manifest import cell_paths
from usvl.paths import cache_dir
from usvl.utils.atomic import atomic_output, write_text_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class DecodedSplit:
    """Decoded arrays of one split and what was left out.

    Attributes:
        images: ``uint8 [N, 1, S, S]`` of the kept rows.
        masks: ``uint8 [N, 1, S, S]`` in {0, 1}, or ``None`` without masks.
        kept: Manifest positions of the kept rows, in order.
        names: Names of the kept rows.
        skipped: ``(name, reason)`` of every row left out.
        spacings: ``float64 [N, 2]`` ``(row, column)`` mm per pixel of the resized arrays (NaN where unknown), or
            ``None`` when no kept image has one (only calibrated DICOM images do).
    """

    images: np.ndarray
    masks: np.ndarray | None
    kept: list[int]
    names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    spacings: np.ndarray | None = None


def _paths(cell: Any) -> list[str]:
    return [os.path.abspath(p) for p in cell_paths(cell)]


def _stamp(path: str) -> list[Any]:
    try:
        info = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, info.st_size, info.st_mtime_ns]


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode("utf-8")).hexdigest()


def default_root() -> Path:
    """Folder of the decoded-image cache: ``usvl.paths.cache_dir() / "decoded"``."""
    return cache_dir() / "decoded"


class DecodeCache:
    """The cache entry of one split: its key, its files, and loading and saving them.

    Args:
        images: Image path per manifest row.
        masks: Mask path (or list of paths, or empty) per row; ignored unless ``with_masks``.
        size: Side length the arrays were resized to.
        with_masks: Whether the entry holds masks.
        root: Cache folder (default :func:`default_root`).
    """

    def __init__(self, images: Sequence[Any], masks: Sequence[Any] | None, size: int, with_masks: bool,
                 root: str | os.PathLike | None = None) -> None:
        self.size = int(size)
        self.with_masks = bool(with_masks)
        self.root = Path(root) if root is not None else default_root()
        rows = []
        for index, image in enumerate(images):
            row = [_paths(image)]
            if self.with_masks:
                row.append(_paths(masks[index]) if masks is not None else [])
            rows.append(row)
        header = {"decoder": DECODER_VERSION, "format": FORMAT_VERSION, "size": self.size,
                  "with_masks": self.with_masks}
        self.identity = _digest({**header, "rows": rows})[:16]
        stamped = [[[_stamp(p) for p in paths] for paths in row] for row in rows]
        self.key = _digest({**header, "rows": stamped})[:24]
        self.stem = f"{self.identity}-{self.key}"

    @property
    def images_path(self) -> Path:
        """The images array file."""
        return self.root / f"{self.stem}.images.npy"

    @property
    def masks_path(self) -> Path:
        """The masks array file."""
        return self.root / f"{self.stem}.masks.npy"

    @property
    def meta_path(self) -> Path:
        """The JSON of names, kept positions and skipped rows; written last, so it marks a complete entry."""
        return self.root / f"{self.stem}.json"

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold this split's lock file while reading, decoding and writing the entry.

        Several processes that open the same split at once (DDP ranks, runs of a grid) then decode it once: the
        first decodes and writes, the others wait and read the entry. Without a writable cache folder the block
        runs unlocked (the entry cannot be written either; :meth:`save` warns).
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.root / f".{self.identity}.lock"))
            lock.acquire()
        except OSError as error:
            log.debug("Decoded-image cache lock unavailable (%s); decoding without it", error)
            yield
            return
        try:
            yield
        finally:
            lock.release()

    def load(self) -> DecodedSplit | None:
        """Read the entry, or ``None`` on a miss (absent, stale or unreadable; logged either way)."""
        if not self.meta_path.is_file():
            log.info("Decoded-image cache miss: %s", self.meta_path)
            return None
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            if meta.get("key") != self.key:
                raise ValueError(f"key {meta.get('key')} != {self.key}")
            count = len(meta["kept"])
            images = self._read(self.images_path, count)
            masks = self._read(self.masks_path, count) if self.with_masks else None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("Decoded-image cache entry %s is unreadable (%s); decoding again", self.meta_path, error)
            return None
        log.info("Decoded-image cache hit: %d images from %s", count, self.images_path)
        spacings = meta.get("spacings")
        if spacings is not None:
            spacings = np.array([[np.nan, np.nan] if row is None else row for row in spacings], dtype=np.float64)
        return DecodedSplit(images, masks, [int(i) for i in meta["kept"]], list(meta["names"]),
                            [(str(name), str(reason)) for name, reason in meta["skipped"]], spacings)

    def _read(self, path: Path, count: int) -> np.ndarray:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        expected = (count, 1, self.size, self.size)
        if mapped.shape != expected or mapped.dtype != np.uint8:
            raise ValueError(f"{path.name} holds {mapped.dtype} {mapped.shape}, expected uint8 {expected}")
        array = np.array(mapped)  # copy out of the memory map
        del mapped
        return array

    def save(self, split: DecodedSplit) -> None:
        """Write the entry atomically and delete stale entries of the same split; failures only warn."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._write_array(self.images_path, split.images)
            if self.with_masks and split.masks is not None:
                self._write_array(self.masks_path, split.masks)
            meta = {"key": self.key, "identity": self.identity, "decoder": DECODER_VERSION, "size": self.size,
                    "with_masks": self.with_masks, "kept": list(split.kept), "names": list(split.names),
                    "skipped": [list(row) for row in split.skipped]}
            if split.spacings is not None:
                meta["spacings"] = [None if np.isnan(row).any() else [float(v) for v in row] for row in split.spacings]
            write_text_atomic(self.meta_path, json.dumps(meta, ensure_ascii=False))
        except OSError as error:
            log.warning("Could not write the decoded-image cache %s: %s", self.meta_path, error)
            return
        log.info("Decoded-image cache written: %d images to %s", len(split.kept), self.images_path)
        self._remove_stale()

    @staticmethod
    def _write_array(path: Path, array: np.ndarray) -> None:
        with atomic_output(path) as temporary, open(temporary, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)

    def _remove_stale(self) -> None:
        for path in self.root.glob(f"{self.identity}-*"):
            if not path.name.startswith(self.stem + "."):
                try:
                    path.unlink()
                    log.debug("Removed stale decoded-image cache file %s", path)
                except OSError:
                    pass
