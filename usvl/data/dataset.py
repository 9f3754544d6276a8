"""A map-style dataset over a manifest, with images decoded and resized once into memory."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from usvl.data.transforms import load_image, load_mask

log = logging.getLogger(__name__)


class UltrasoundDataset(Dataset):
    """Images (and masks) of one split, decoded once to ``uint8`` arrays of ``size x size``.

    Each item is a dict with ``image`` (``uint8 [1, S, S]``), ``label`` (``long``, -1 when unknown),
    ``mask`` (``uint8 [1, S, S]``, when the manifest has masks) and ``name``.

    Args:
        manifest: Rows with columns ``name``, ``image``, ``mask``, ``label``.
        size: Output side length.
        with_masks: Load the masks (segmentation).
        threads: Decoding threads.
    """

    def __init__(self, manifest: pd.DataFrame, size: int, with_masks: bool = False, threads: int = 4) -> None:
        self.names = manifest["name"].tolist()
        self.labels = torch.tensor(manifest["label"].fillna(-1).astype(int).tolist(), dtype=torch.long)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            images = list(pool.map(lambda p: load_image(p, size), manifest["image"]))
            self.images = torch.from_numpy(np.stack(images)[:, None]) if images else torch.empty(0, 1, size, size)
            self.masks = None
            if with_masks:
                missing = manifest[manifest["mask"].isna()]["name"].tolist()
                if missing:
                    raise FileNotFoundError(f"{len(missing)} images have no mask, e.g. {missing[:5]}")
                masks = list(pool.map(lambda p: load_mask(p, size), manifest["mask"]))
                self.masks = torch.from_numpy(np.stack(masks)[:, None])

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        item = {"image": self.images[index], "label": self.labels[index], "name": self.names[index]}
        if self.masks is not None:
            item["mask"] = self.masks[index]
        return item
