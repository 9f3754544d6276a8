"""Data modules: one shared machinery, one thin module per dataset source."""

from usvl.data.datamodule import UltrasoundDataModule
from usvl.data.sources import DatasetNotFoundError, NextGenDataModule, SyntheticDataModule
from usvl.data.transforms import BatchAugment

__all__ = ["BatchAugment", "DatasetNotFoundError", "NextGenDataModule", "SyntheticDataModule",
           "UltrasoundDataModule"]
