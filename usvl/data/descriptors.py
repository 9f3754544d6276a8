"""Lexicon descriptors (TI-RADS, BI-RADS) as training targets: batches carry each image's descriptor values.

The descriptor heads of :class:`usvl.tasks.LexiconTask` learn from the descriptors a reader reported for each image.
The data modules here add them to every decoded split: each item gains ``descriptors``, a dict from descriptor name
(``composition``, ``echogenic_foci``, ``shape``, ...) to its value as a string, ``""`` where the image has none, so a
batch holds ``batch["descriptors"][name]``, a list of strings. Several values of a multi-label descriptor are
written ``punctate;rim``. The task maps the strings to its lexicon's vocabulary (:mod:`usvl.lexicon`, which also
accepts ``Very hypoechoic`` for ``very_hypoechoic``); an image without a value is left out of that descriptor's loss,
not out of training.

Where descriptors come from:

* :class:`SyntheticDescriptorDataModule`: the generator's ground truth in ``metadata.jsonl`` (every descriptor of
  every image; the breast twin's normal images have none).
* ``descriptor_file`` (both modules): a CSV with a ``name`` column (the manifest's image names) and one column per
  descriptor; its values win over the metadata's. :class:`FolderDescriptorDataModule` reads a folder or CSV
  manifest (:class:`~usvl.data.sources.folder.FolderDataModule`), e.g. ``labels.csv`` with descriptor columns next
  to ``image`` and ``label`` (pass it as both ``labels`` and ``descriptor_file``).
* :class:`DDTIDescriptorDataModule`: the radiologists' descriptors in the case XML files of DDTI's original release
  (composition, echogenicity, margins, calcifications), mapped to ACR TI-RADS by
  :func:`~usvl.data.sources.ddti.read_ddti_descriptors`; DDTI has no shape, so ``shape`` is missing for every image.
  The processed 637-image release has no XML: it needs a ``descriptor_file``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from torch.utils.data import Dataset

from usvl.data.manifest import DatasetNotFoundError, is_empty
from usvl.data.sources.ddti import DDTIDataModule, ddti_release, read_ddti_descriptors
from usvl.data.sources.folder import FolderDataModule
from usvl.data.sources.synthetic import SyntheticDataModule
from usvl.utils.errors import UserError

log = logging.getLogger(__name__)

NOT_DESCRIPTORS = frozenset({"name", "image", "image_path", "path", "file", "filename", "mask", "label",
                             "label_name", "split", "patient", "caption", "finding", "tirads_points",
                             "tirads_category"})
"""Columns and metadata keys that are no descriptors (derived scores such as ``tirads_points`` included)."""


class NoDescriptorsError(UserError, ValueError):
    """The source holds no descriptors and no ``descriptor_file`` gives them."""


def descriptor_text(value: Any) -> str:
    """A descriptor value as a batch carries it: a string, several values joined by ``;``, ``""`` when empty."""
    if isinstance(value, list | tuple):
        return ";".join(str(v) for v in value if not is_empty(v))
    return "" if is_empty(value) else str(value).strip()


def read_metadata_descriptors(root: str | Path) -> dict[str, dict[str, str]]:
    """The generator's descriptors of every image of a synthetic dataset, from ``<root>/metadata.jsonl``.

    Raises:
        DatasetNotFoundError: The file does not exist.
        ValueError: A line is not a JSON object with ``name`` and ``descriptors`` (file and line in the message).
    """
    path = Path(root) / "metadata.jsonl"
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} does not exist: generate the dataset again (usvl data generate)")
    found = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            values = record["descriptors"]
            found[str(record["name"])] = {str(k): descriptor_text(v) for k, v in values.items()
                                          if k not in NOT_DESCRIPTORS}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}:{number}: expected a JSON object with 'name' and 'descriptors' ({error})") \
                from error
    return found


def read_descriptor_file(path: str | Path) -> dict[str, dict[str, str]]:
    """Descriptors by image name from a CSV: a ``name`` column and one column per descriptor.

    Other columns (``image``, ``label``, ``split``, ...; see :data:`NOT_DESCRIPTORS`) are ignored.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The CSV has no ``name`` column or repeats a name.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Descriptor file {path} does not exist: write a CSV with a 'name' column and one "
                                "column per descriptor (e.g. composition, echogenicity, shape, margin, echogenic_foci)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "name" not in table.columns:
        raise ValueError(f"{path}:1: no 'name' column (the manifest's image names); columns: {list(table.columns)}")
    repeated = table["name"][table["name"].duplicated()].tolist()
    if repeated:
        raise ValueError(f"{path}: names repeat, e.g. {repeated[:5]}")
    columns = [c for c in table.columns if c.strip().lower() not in NOT_DESCRIPTORS]
    return {str(row["name"]): {c.strip().lower(): descriptor_text(row[c]) for c in columns}
            for _, row in table.iterrows()}


class DescribedDataset(Dataset):
    """A decoded split whose items also carry ``descriptors`` (a dict of strings, ``""`` where missing).

    Every item has the same keys (those of any image of the split), so batches collate to lists of strings.

    Args:
        dataset: The split's :class:`~usvl.data.dataset.UltrasoundDataset`.
        descriptors: Each item's descriptors, aligned with ``dataset.names`` (an empty dict: none).
    """

    def __init__(self, dataset: Dataset, descriptors: Sequence[Mapping[str, str]]) -> None:
        if len(descriptors) != len(dataset):
            raise ValueError(f"{len(descriptors)} descriptor records for {len(dataset)} images")
        keys = sorted({key for record in descriptors for key in record})
        self.dataset = dataset
        self.descriptors = [{key: record.get(key, "") for key in keys} for record in descriptors]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item["descriptors"] = dict(self.descriptors[index])
        return item

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


class DescriptorsMixin:
    """Adds descriptor targets to an :class:`~usvl.data.datamodule.UltrasoundDataModule` subclass.

    :meth:`read_manifest` reads the source's manifest and keeps the descriptors of its images in
    :attr:`descriptors_by_name` (:meth:`read_descriptors`, then ``descriptor_file`` on top); :meth:`setup` wraps
    each decoded split in a :class:`DescribedDataset` (``predict`` streams images and needs none).
    """

    descriptor_file: str | None = None
    descriptors_by_name: dict[str, dict[str, str]]

    def read_descriptors(self, manifest: pd.DataFrame) -> dict[str, dict[str, str]]:
        """Descriptors by image name that the source itself holds (none by default)."""
        return {}

    def read_manifest(self) -> pd.DataFrame:
        """The source's manifest; the descriptors of its images go to :attr:`descriptors_by_name`."""
        manifest = super().read_manifest()
        found = self.read_descriptors(manifest)
        if self.descriptor_file:
            for name, values in read_descriptor_file(self.descriptor_file).items():
                found[name] = {**found.get(name, {}), **values}
        names = [str(name) for name in manifest["name"]]
        self.descriptors_by_name = {name: found.get(name, {}) for name in names}
        counts: dict[str, int] = {}
        for record in self.descriptors_by_name.values():
            for key, value in record.items():
                counts[key] = counts.get(key, 0) + bool(value)
        log.info("Descriptor targets of %d images: %s", len(names),
                 ", ".join(f"{key} {count}" for key, count in sorted(counts.items())) or "none")
        return manifest

    def setup(self, stage: str | None = None) -> None:
        """Set up the splits as the base module does, then give every decoded split its descriptors."""
        super().setup(stage)
        for split, dataset in list(self.datasets.items()):
            if not isinstance(dataset, DescribedDataset):
                records = [self.descriptors_by_name.get(str(name), {}) for name in dataset.names]
                self.datasets[split] = DescribedDataset(dataset, records)


class SyntheticDescriptorDataModule(DescriptorsMixin, SyntheticDataModule):
    """A synthetic twin whose batches carry the generator's lexicon descriptors (``metadata.jsonl``).

    Args:
        descriptor_file: A CSV of descriptors by image ``name`` whose values replace the generator's (see the
            module docstring); None: the generator's only.
        **kwargs: Arguments of :class:`~usvl.data.sources.synthetic.SyntheticDataModule` (``preset``, ``profile``,
            ``test_preset``, ...) and :class:`~usvl.data.datamodule.UltrasoundDataModule`.
    """

    def __init__(self, descriptor_file: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.descriptor_file = descriptor_file

    def read_descriptors(self, manifest: pd.DataFrame) -> dict[str, dict[str, str]]:
        """The generator's descriptors (and those of the separate test data, when there is one)."""
        found = read_metadata_descriptors(self.root)
        if self.test_data_root is not None:
            found.update({self.test_data_name(name): values
                          for name, values in read_metadata_descriptors(self.test_data_root).items()})
        return found


class FolderDescriptorDataModule(DescriptorsMixin, FolderDataModule):
    """A folder or CSV manifest (:class:`~usvl.data.sources.folder.FolderDataModule`) with descriptor targets.

    Args:
        descriptor_file: CSV with a ``name`` column (the manifest's image names) and one column per descriptor;
            the folder's own ``labels.csv`` may carry them (pass its path). Images it does not list, and empty
            cells, have no descriptor.
        **kwargs: Arguments of :class:`~usvl.data.sources.folder.FolderDataModule` (``root``, ``labels``, ...).
    """

    def __init__(self, descriptor_file: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.descriptor_file = descriptor_file


class DDTIDescriptorDataModule(DescriptorsMixin, DDTIDataModule):
    """DDTI thyroid nodules (:class:`~usvl.data.sources.ddti.DDTIDataModule`) with ACR TI-RADS descriptor targets.

    The original release's case XML files hold composition, echogenicity, margins and calcifications; they are mapped
    to ACR TI-RADS (:func:`~usvl.data.sources.ddti.read_ddti_descriptors`, which warns about values it cannot map)
    and every image of a case gets its case's values. ``shape`` is missing for every image (DDTI does not record it),
    so the shape head does not train. Labels are those of :class:`~usvl.data.sources.ddti.DDTIDataModule` (TI-RADS
    2-3 benign, 4a-5 malignant).

    Args:
        root: Folder of the original release (``<case>.xml`` + ``<case>_<k>.jpg``).
        version: ``original`` (default; the release with the XML files), ``processed`` (only with a
            ``descriptor_file``: it has no XML) or ``auto``.
        task: ``classification`` (default: :class:`usvl.tasks.LexiconTask` is a classifier) or ``segmentation``.
        descriptor_file: A CSV of descriptors by image ``name`` whose values replace the XML's (see the module
            docstring); None: the XML's only.
        **kwargs: Arguments of :class:`~usvl.data.datamodule.UltrasoundDataModule` (``image_size``, ``batch_size``,
            ...).
    """

    def __init__(self, root: str, version: Literal["auto", "original", "processed"] = "original",
                 task: Literal["classification", "segmentation"] = "classification",
                 descriptor_file: str | None = None, **kwargs: Any) -> None:
        super().__init__(root=root, version=version, task=task, **kwargs)
        self.descriptor_file = descriptor_file
        self._xml_descriptors: dict[str, dict[str, str]] | None = None

    def read_descriptors(self, manifest: pd.DataFrame) -> dict[str, dict[str, str]]:
        """The case XML's descriptors (read once per data module, so its warning comes once).

        Raises:
            NoDescriptorsError: The release read is the processed one and no ``descriptor_file`` is given.
        """
        release, folder = ddti_release(self.root, self.version)
        if release == "processed":
            if self.descriptor_file:
                return {}
            raise NoDescriptorsError(
                f"{folder} is DDTI's processed release, which has no case XML and so no descriptors: point "
                "--data.init_args.root at the original release (<case>.xml + <case>_<k>.jpg, version original) or "
                "pass --data.init_args.descriptor_file <CSV with a name column and one column per descriptor>")
        if self._xml_descriptors is None:
            self._xml_descriptors = read_ddti_descriptors(folder)
        return {name: dict(values) for name, values in self._xml_descriptors.items()}
