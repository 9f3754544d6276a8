"""Data modules: one shared machinery, one thin module per dataset source.

Layers, lowest first: :mod:`~usvl.data.manifest` (the manifest contract), :mod:`~usvl.data.decode` (the decoding
rule) and :mod:`~usvl.data.bad_files` (the bad-file error and skip list) <- splits, duplicates, dataset,
decode_cache, transforms and acquisition_augment (augmentation) <- datamodule <- sources (one module per layout,
helpers in ``sources.common``) <- ``sources.registry`` <- check, cli.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from usvl.data.acquisition_augment import AcquisitionAugment
    from usvl.data.bad_files import BadFilesError
    from usvl.data.datamodule import UltrasoundDataModule
    from usvl.data.manifest import DatasetNotFoundError
    from usvl.data.sources import (
        BUSIDataModule,
        DDTIDataModule,
        FolderDataModule,
        NextGenDataModule,
        ProstateDataModule,
        SyntheticDataModule,
        TN3KDataModule,
        read_source,
    )
    from usvl.data.transforms import BatchAugment

# The public names, each loaded from its module on first use: importing a light submodule (the synthetic generator
# in its worker processes, the manifest contract) then costs no torch or Lightning import.
_PUBLIC_NAMES = {
    "AcquisitionAugment": "usvl.data.acquisition_augment",
    "BUSIDataModule": "usvl.data.sources",
    "BadFilesError": "usvl.data.bad_files",
    "BatchAugment": "usvl.data.transforms",
    "DDTIDataModule": "usvl.data.sources",
    "DatasetNotFoundError": "usvl.data.manifest",
    "FolderDataModule": "usvl.data.sources",
    "NextGenDataModule": "usvl.data.sources",
    "ProstateDataModule": "usvl.data.sources",
    "SyntheticDataModule": "usvl.data.sources",
    "TN3KDataModule": "usvl.data.sources",
    "UltrasoundDataModule": "usvl.data.datamodule",
    "read_source": "usvl.data.sources",
}

__all__ = ["AcquisitionAugment", "BUSIDataModule", "BadFilesError", "BatchAugment", "DDTIDataModule",
           "DatasetNotFoundError", "FolderDataModule", "NextGenDataModule", "ProstateDataModule", "SyntheticDataModule",
           "TN3KDataModule", "UltrasoundDataModule", "read_source"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC_NAMES:
        return getattr(importlib.import_module(_PUBLIC_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC_NAMES))
