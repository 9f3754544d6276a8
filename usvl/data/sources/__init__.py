"""One module per dataset source: a layout reader and its thin LightningDataModule."""

from usvl.data.sources.nextgen import DatasetNotFoundError, NextGenDataModule, read_nextgen_manifest
from usvl.data.sources.synthetic import SyntheticDataModule, ensure_synthetic

__all__ = ["DatasetNotFoundError", "NextGenDataModule", "SyntheticDataModule", "ensure_synthetic",
           "read_nextgen_manifest"]
