"""Data modules: one shared machinery, one thin module per dataset source.

Layers, lowest first: :mod:`~usvl.data.manifest` (the manifest contract), :mod:`~usvl.data.decode` (the decoding
rule) and :mod:`~usvl.data.bad_files` (the bad-file error and skip list) <- splits, duplicates, dataset,
decode_cache, transforms and acquisition_augment (augmentation) <- datamodule <- sources (one module per layout,
helpers in ``sources.common``) <- ``sources.registry`` <- check, cli.
"""

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

__all__ = ["AcquisitionAugment", "BUSIDataModule", "BadFilesError", "BatchAugment", "DDTIDataModule",
           "DatasetNotFoundError", "FolderDataModule", "NextGenDataModule", "ProstateDataModule", "SyntheticDataModule",
           "TN3KDataModule", "UltrasoundDataModule", "read_source"]
