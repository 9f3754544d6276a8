"""Data modules: one shared machinery, one thin module per dataset source."""

from usvl.data.datamodule import BadFilesError, UltrasoundDataModule
from usvl.data.sources import (
    BUSIDataModule,
    DatasetNotFoundError,
    DDTIDataModule,
    FolderDataModule,
    NextGenDataModule,
    ProstateDataModule,
    SyntheticDataModule,
    TN3KDataModule,
    read_source,
)
from usvl.data.transforms import BatchAugment

__all__ = ["BUSIDataModule", "BadFilesError", "BatchAugment", "DDTIDataModule", "DatasetNotFoundError",
           "FolderDataModule", "NextGenDataModule", "ProstateDataModule", "SyntheticDataModule", "TN3KDataModule",
           "UltrasoundDataModule", "read_source"]
