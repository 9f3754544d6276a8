"""One module per dataset source: a layout reader (``read_<source>_manifest``) and its thin LightningDataModule.

Shared reader helpers are in :mod:`usvl.data.sources.common`; the manifest contract in :mod:`usvl.data.manifest`.
"""

from usvl.data.manifest import MANIFEST_COLUMNS, DatasetNotFoundError
from usvl.data.sources.busi import BUSIDataModule, read_busi_manifest
from usvl.data.sources.ddti import DDTIDataModule, read_ddti_descriptors, read_ddti_manifest
from usvl.data.sources.folder import FolderDataModule, read_folder_manifest
from usvl.data.sources.nextgen import NextGenDataModule, read_nextgen_manifest
from usvl.data.sources.prostate import ProstateDataModule, read_prostate_manifest
from usvl.data.sources.registry import SOURCES, read_source
from usvl.data.sources.synthetic import SyntheticDataModule, ensure_synthetic
from usvl.data.sources.tn3k import TN3KDataModule, read_tn3k_manifest

__all__ = ["BUSIDataModule", "DDTIDataModule", "DatasetNotFoundError", "FolderDataModule", "MANIFEST_COLUMNS",
           "NextGenDataModule", "ProstateDataModule", "SOURCES", "SyntheticDataModule", "TN3KDataModule",
           "ensure_synthetic", "read_busi_manifest", "read_ddti_descriptors", "read_ddti_manifest",
           "read_folder_manifest", "read_nextgen_manifest", "read_prostate_manifest", "read_source",
           "read_tn3k_manifest"]
