"""Datasets over a manifest: decoded and resized once into memory (and onto disk), or streamed for prediction."""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from usvl.data.decode import Decoded, check_mask_size, decode_image, decode_mask
from usvl.data.decode_cache import DecodeCache, DecodedSplit
from usvl.data.dicom import frame_name, is_dicom_path, read_dicom_info
from usvl.data.manifest import cell_paths, is_empty

log = logging.getLogger(__name__)

BAD_FILE_POLICIES = ("error", "skip")


class UltrasoundDataset(Dataset):
    """Images (and masks) of one split, decoded once to ``uint8`` arrays of ``size x size``.

    Each item is a dict with ``image`` (``uint8 [1, S, S]``), ``label`` (``long``, -1 when unknown),
    ``mask`` (``uint8 [1, S, S]`` in {0, 1}, with ``with_masks``), ``name`` and, when an image of the split has a
    pixel spacing (a calibrated DICOM, see :mod:`usvl.data.dicom`), ``spacing`` (``float64 [2]``: row and column mm
    per pixel of the resized image, NaN for the images without one). Decoding follows
    ``usvl.data.decode`` (mask binarisation, bit depth, orientation, mask/image size rules). The decoded
    arrays are kept in a disk cache (``usvl.data.decode_cache``) keyed by the files' paths, sizes and
    modification times, so a later run loads them instead of decoding.

    Args:
        manifest: Rows with columns ``name``, ``image``, ``mask``, ``label``. A mask cell may hold a list of
            paths (several masks of one image, OR-merged).
        size: Output side length.
        with_masks: Load the masks (segmentation).
        threads: Decoding threads.
        on_bad_file: ``"error"``: a corrupt, unreadable or missing file (or a missing mask, or a mask of an
            unrelated size) raises, naming the file. ``"skip"``: such rows are dropped, listed in
            :attr:`skipped` and reported in one warning with their count and first names.
        cache: Use the disk cache of decoded arrays (``True``: under ``usvl.paths.cache_dir()/decoded``; a
            path: that folder; ``False`` or ``None``: always decode, write nothing).
        warn: Log the rows skipped under ``on_bad_file="skip"`` in a warning (``False``: the caller reports them).

    Attributes:
        skipped: ``(name, reason)`` of every row left out under ``on_bad_file="skip"``.
        kept: Manifest positions of the rows in the dataset.
        cache_hit: Whether the arrays came from the disk cache.
        cache_path: The cache entry's JSON file, or ``None`` with ``cache=False``.

    Raises:
        ValueError: A file cannot be decoded, a mask does not fit its image, or ``on_bad_file`` is unknown.
        FileNotFoundError: A file or a mask is missing (with ``on_bad_file="error"``).
    """

    def __init__(self, manifest: pd.DataFrame, size: int, with_masks: bool = False, threads: int = 4,
                 on_bad_file: Literal["error", "skip"] = "error",
                 cache: bool | str | os.PathLike | None = True, warn: bool = True) -> None:
        if on_bad_file not in BAD_FILE_POLICIES:
            raise ValueError(f"on_bad_file must be one of {BAD_FILE_POLICIES}, not {on_bad_file!r}")
        names = [str(name) for name in manifest["name"].tolist()]
        images = manifest["image"].tolist()
        masks = manifest["mask"].tolist() if "mask" in manifest.columns else [None] * len(names)
        labels = manifest["label"].fillna(-1).astype(int).tolist()
        self.size = size
        self.cache_hit = False
        self.cache_path = None
        entry = None
        if cache and len(names):
            entry = DecodeCache(images, masks, size, with_masks, root=None if cache is True else cache)
            self.cache_path = entry.meta_path
        with entry.exclusive() if entry is not None else contextlib.nullcontext():
            split = entry.load() if entry is not None else None
            if split is not None and split.skipped and on_bad_file == "error":
                split = None  # decode again, so the first bad file raises its own error
            if split is None:
                split = _decode_split(names, images, masks, size, with_masks, threads, on_bad_file)
                if entry is not None:
                    entry.save(split)
            else:
                self.cache_hit = True
        self.kept = split.kept
        self.skipped = split.skipped
        if self.skipped and warn:
            examples = "; ".join(f"{name} ({reason})" for name, reason in self.skipped[:3])
            log.warning("Skipped %d of %d images with bad or missing files (on_bad_file='skip'), e.g. %s",
                        len(self.skipped), len(names), examples)
        self.names = [names[i] for i in self.kept]
        self.labels = torch.tensor([labels[i] for i in self.kept], dtype=torch.long)
        self.images = torch.from_numpy(split.images)
        self.masks = torch.from_numpy(split.masks) if split.masks is not None else None
        self.spacings = torch.from_numpy(split.spacings) if split.spacings is not None else None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        item = {"image": self.images[index], "label": self.labels[index], "name": self.names[index]}
        if self.masks is not None:
            item["mask"] = self.masks[index]
        if self.spacings is not None:
            item["spacing"] = self.spacings[index]
        return item


def resized_spacing(decoded: Decoded, size: int) -> tuple[float, float]:
    """``(row, column)`` mm per pixel after resizing ``decoded`` to ``size x size`` (NaN without a spacing)."""
    if decoded.spacing_mm is None:
        return (float("nan"), float("nan"))
    width, height = decoded.source_size
    return (decoded.spacing_mm[0] * height / size, decoded.spacing_mm[1] * width / size)


def _decode_split(names: list[str], images: list[Any], masks: list[Any], size: int, with_masks: bool,
                  threads: int, on_bad_file: str) -> DecodedSplit:
    """Decode every row into preallocated arrays; raise at the first bad row or record it, per ``on_bad_file``."""
    count = len(names)
    image_out = np.zeros((count, 1, size, size), dtype=np.uint8)
    mask_out = np.zeros((count, 1, size, size), dtype=np.uint8) if with_masks else None
    spacing_out = np.full((count, 2), np.nan)
    reasons: dict[int, str] = {}
    if with_masks:
        missing = [i for i in range(count) if is_empty(masks[i])]
        if missing and on_bad_file == "error":
            raise FileNotFoundError(
                f"{len(missing)} images have no mask, e.g. {[names[i] for i in missing[:5]]} "
                f"(images {[str(images[i]) for i in missing[:2]]})"
            )
        reasons.update({i: "no mask" for i in missing})

    def work(index: int) -> tuple[int, Exception | None, bool]:
        try:
            if is_empty(images[index]):
                raise FileNotFoundError(f"No image path for {names[index]}")
            image = decode_image(images[index], size)
            image_out[index, 0] = image.array
            spacing_out[index] = resized_spacing(image, size)
            rescaled = False
            if mask_out is not None:
                mask = decode_mask(masks[index], size)
                rescaled = check_mask_size(images[index], image.source_size, masks[index], mask.source_size)
                mask_out[index, 0] = mask.array
        except (ValueError, OSError) as error:
            return index, error, False
        return index, None, rescaled

    todo = [i for i in range(count) if i not in reasons]
    rescaled_count = 0
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 and len(todo) > 1 else None
    try:
        results = pool.map(work, todo) if pool is not None else map(work, todo)
        for index, error, rescaled in results:
            if error is not None:
                if on_bad_file == "error":
                    raise error
                reasons[index] = str(error)
            rescaled_count += rescaled
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if rescaled_count:
        log.info("%d masks differ in size from their images but share their aspect ratio; resized with them",
                 rescaled_count)
    kept = [i for i in range(count) if i not in reasons]
    if len(kept) < count:
        image_out = image_out[kept]
        mask_out = mask_out[kept] if mask_out is not None else None
    spacing_out = spacing_out[kept]
    skipped = [(names[i], reasons[i]) for i in sorted(reasons)]
    spacings = spacing_out if np.isfinite(spacing_out).any() else None
    return DecodedSplit(image_out, mask_out, kept, [names[i] for i in kept], skipped, spacings)


class StreamingImageDataset(IterableDataset):
    """The images of a manifest, decoded one at a time while iterating (no masks, no labels needed): for ``predict``.

    Nothing is kept per image, so memory stays flat however many images there are. Each item is a dict with
    ``image`` (``uint8 [1, S, S]``), ``label`` (``long``, -1 when unknown), ``name``, ``path`` (the image file),
    ``original_size`` (``long [2]``: height and width of the file after EXIF orientation; of a DICOM, of its
    ultrasound region), so a prediction can be written back at the image's own size, ``frame`` (``long``: the frame
    number of a multi-frame DICOM, from 1; 0 for any other image) and ``spacing`` (``float64 [2]``: row and column
    mm per pixel at the original size, NaN when unknown; see :mod:`usvl.data.dicom`). A multi-frame DICOM (cine
    loop) is one item per frame, named ``<name>#frame001``, ``#frame002``, ... (its header is read when the dataset
    is built, to count its frames; under ``on_bad_file="skip"`` an unreadable header leaves it one item, skipped when
    it is read). With several DataLoader workers, worker ``k`` of ``n`` takes the blocks of
    ``block_size`` rows numbered ``k, k + n, ...``: with ``block_size`` equal to the loader's batch size every batch
    is one block, so the loader yields exactly ``ceil(len / batch_size)`` batches (the count Lightning expects from
    ``len``; row-wise sharding would leave a short batch per worker and Lightning would stop before the last rows).

    Args:
        manifest: Rows with columns ``name``, ``image`` and optionally ``label``.
        size: Side length images are resized to (by :func:`usvl.data.decode.decode_image`, as for training).
        on_bad_file: ``"error"``: an unreadable or missing image raises, naming the file. ``"skip"``: it is left
            out with a warning naming it.
        block_size: Rows per worker block; set it to the loader's batch size.

    Raises:
        ValueError: ``on_bad_file`` is unknown, or ``block_size`` < 1.
    """

    def __init__(self, manifest: pd.DataFrame, size: int, on_bad_file: Literal["error", "skip"] = "error",
                 block_size: int = 1) -> None:
        if on_bad_file not in BAD_FILE_POLICIES:
            raise ValueError(f"on_bad_file must be one of {BAD_FILE_POLICIES}, not {on_bad_file!r}")
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, not {block_size}")
        self.block_size = block_size
        self.size = size
        self.on_bad_file = on_bad_file
        names = [str(name) for name in manifest["name"].tolist()]
        paths = [next(iter(cell_paths(cell)), "") for cell in manifest["image"].tolist()]
        labels = manifest["label"] if "label" in manifest.columns else pd.Series([-1] * len(names))
        self.names, self.paths, self.labels, self.frames = [], [], [], []
        for name, path, label in zip(names, paths, labels.fillna(-1).astype(int).tolist(), strict=True):
            frames = self._frame_count(name, path)
            for frame in range(1, frames + 1) if frames > 1 else [0]:
                self.names.append(frame_name(name, frame) if frame else name)
                self.paths.append(path)
                self.labels.append(label)
                self.frames.append(frame)

    def _frame_count(self, name: str, path: str) -> int:
        """Frames of a DICOM image (1 for anything else, and for an unreadable header under ``skip``)."""
        if not path or not is_dicom_path(path):
            return 1
        try:
            return read_dicom_info(path).frames
        except (ValueError, OSError):
            if self.on_bad_file == "error":
                raise
            return 1  # skipped, with its reason, when the item is read

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        blocks = range(worker_id * self.block_size, len(self.names), workers * self.block_size)
        for first in blocks:
            for index in range(first, min(first + self.block_size, len(self.names))):
                item = self.item(index)
                if item is not None:
                    yield item

    def item(self, index: int) -> dict | None:
        """Decode row ``index``; ``None`` for a bad file under ``on_bad_file="skip"`` (logged).

        Raises:
            FileNotFoundError: The image is missing (``on_bad_file="error"``).
            ValueError: The image cannot be decoded (``on_bad_file="error"``); the message names the file.
        """
        path = self.paths[index]
        try:
            if not path:
                raise FileNotFoundError(f"No image path for {self.names[index]}")
            decoded = decode_image(path, self.size, self.frames[index] or None)
        except (ValueError, OSError) as error:
            if self.on_bad_file == "error":
                raise
            log.warning("Skipped %s (on_bad_file='skip'): %s", self.names[index], error)
            return None
        width, height = decoded.source_size
        spacing = decoded.spacing_mm if decoded.spacing_mm is not None else (float("nan"), float("nan"))
        return {"image": torch.tensor(decoded.array[None]), "label": torch.tensor(self.labels[index]),
                "name": self.names[index], "path": path, "original_size": torch.tensor([height, width]),
                "frame": torch.tensor(self.frames[index]), "spacing": torch.tensor(spacing, dtype=torch.float64)}
