"""Image-caption data for stage-1 contrastive training: the generator's captions, or a CSV of real caption sets.

Two data modules, both :class:`~usvl.data.datamodule.UltrasoundDataModule` underneath (same manifest contract,
splits grouped by patient, few-shot subsets, decoding and decode cache); their batches carry a ``caption`` (a list of
strings) next to ``image``, ``label`` and ``name``:

* :class:`SyntheticCaptionDataModule`: the embedded synthetic presets with the lexicon caption the generator writes
  for every image (``metadata.jsonl``), or LLM-refined versions of it (the JSONL that ``usvl text refine`` writes:
  one ``{"source": caption, "refined": text, ...}`` record per refinement; several records for one caption give
  varied report styles, one drawn per training step, as the NextGen-UIA v1 code did with Qwen3-8B captions).
* :class:`CaptionCSVDataModule`: a CSV ``image_path,caption`` (+ optional ``label``, ``split``, ``patient``) for real
  caption sets such as ROCO or MedPix; an image listed on several rows has several captions.

An image with several captions yields one of them at random in training and the first in validation and test.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from torch.utils.data import Dataset

from usvl.data.datamodule import UltrasoundDataModule
from usvl.data.manifest import DatasetNotFoundError, label_index, make_manifest, normalise_split
from usvl.data.sources.common import absolute
from usvl.data.sources.folder import read_table
from usvl.data.sources.synthetic import SyntheticDataModule

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image_path", "image", "path", "file", "filename")
"""Accepted headers of the image column of a caption CSV, in order of preference."""
CAPTION_COLUMNS = ("caption", "text", "report")
"""Accepted headers of the caption column of a caption CSV, in order of preference."""


class CaptionedDataset(Dataset):
    """A decoded split with captions: each item of the wrapped dataset gains ``caption`` (a string).

    Other attributes (``names``, ``images``, ``labels``, ...) are those of the wrapped dataset.

    Args:
        dataset: The split's :class:`~usvl.data.dataset.UltrasoundDataset`.
        captions: The captions of each item (one or more), aligned with ``dataset.names``.
        sample: Draw one of an item's captions at random (training); otherwise its first caption.

    Raises:
        ValueError: ``captions`` does not have one non-empty list per item.
    """

    def __init__(self, dataset: Dataset, captions: Sequence[Sequence[str]], sample: bool) -> None:
        if len(captions) != len(dataset) or any(not options for options in captions):
            raise ValueError(f"Expected one non-empty caption list per item: {len(dataset)} items, "
                             f"{len(captions)} lists, {sum(not options for options in captions)} empty")
        self.dataset = dataset
        self.captions = [list(options) for options in captions]
        self.sample = sample

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        options = self.captions[index]
        item["caption"] = random.choice(options) if self.sample and len(options) > 1 else options[0]
        return item

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


class CaptionsMixin:
    """Adds captions to an :class:`~usvl.data.datamodule.UltrasoundDataModule` subclass.

    :meth:`read_manifest` reads the base source's manifest and keeps the captions :meth:`read_captions` gives for its
    images in :attr:`captions_by_name` (a source that reads captions with its manifest sets that attribute in its own
    ``read_manifest`` instead); :meth:`setup` wraps each decoded split in a :class:`CaptionedDataset`.
    """

    captions_by_name: dict[str, list[str]]

    def read_captions(self, manifest: pd.DataFrame) -> dict[str, list[str]]:
        """The captions of the images of ``manifest``, by image name (implemented by the source)."""
        raise NotImplementedError(f"{type(self).__name__} must implement read_captions or set captions_by_name")

    def read_manifest(self) -> pd.DataFrame:
        """The source's manifest; its captions are kept in :attr:`captions_by_name`.

        Raises:
            ValueError: Images of the manifest have no caption; the message names some.
        """
        manifest = super().read_manifest()
        captions = self.read_captions(manifest)
        missing = [str(name) for name in manifest["name"] if not captions.get(str(name))]
        if missing:
            raise ValueError(f"{len(missing)} of {len(manifest)} images have no caption, e.g. {missing[:5]}")
        self.captions_by_name = captions
        return manifest

    def setup(self, stage: str | None = None) -> None:
        """Set up the splits as the base module does, then give every decoded split its captions."""
        super().setup(stage)
        for split, dataset in list(self.datasets.items()):
            if not isinstance(dataset, CaptionedDataset):
                captions = [self.captions_by_name[name] for name in dataset.names]
                self.datasets[split] = CaptionedDataset(dataset, captions, sample=split == "train")

    @property
    def captions(self) -> list[str]:
        """Every distinct caption of the manifest's images, in manifest order (after :meth:`prepare_manifest`)."""
        self.prepare_manifest()
        names = [str(name) for name in self.manifest["name"]]
        return list(dict.fromkeys(text for name in names for text in self.captions_by_name[name]))


def read_metadata_captions(root: str | Path) -> dict[str, str]:
    """The generator's caption of every image of a synthetic dataset, from ``<root>/metadata.jsonl``.

    Raises:
        DatasetNotFoundError: The file does not exist.
        ValueError: A line is not a JSON object with ``name`` and ``caption`` (file and line in the message).
    """
    path = Path(root) / "metadata.jsonl"
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} does not exist: generate the dataset again (usvl data generate)")
    captions = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            captions[str(record["name"])] = str(record["caption"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: expected a JSON object with 'name' and 'caption' ({error})") from error
    return captions


def read_refinements(path: str | Path) -> dict[str, list[str]]:
    """Refined texts by source text, from a ``usvl text refine`` JSONL (``{"source": ..., "refined": ...}`` lines).

    Several lines with one source give several refinements, in file order; a refinement equal to its source (the
    guard kept the source) is kept too.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not a JSON object with string ``source`` and ``refined`` (file and line in the message).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Refined captions {path} do not exist: write them with `usvl text refine` (one "
                                "JSON line per caption with 'source' and 'refined')")
    refinements: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            source, refined = record["source"], record["refined"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: expected a JSON object with 'source' and 'refined' ({error})") \
                from error
        if not isinstance(source, str) or not isinstance(refined, str) or not refined.strip():
            raise ValueError(f"{path}:{number}: 'source' and 'refined' must be strings, 'refined' non-empty")
        options = refinements.setdefault(source.strip(), [])
        if refined.strip() not in options:
            options.append(refined.strip())
    return refinements


class SyntheticCaptionDataModule(CaptionsMixin, SyntheticDataModule):
    """A synthetic preset with the generator's lexicon captions, or their LLM refinements, for stage 1.

    Args:
        caption_source: ``lexicon``: the generator's one-sentence lexicon caption of each image. ``refined``: the
            refinements of that caption in ``refined_captions`` (an image whose caption has none keeps its lexicon
            caption; the count is logged). ``both``: the lexicon caption and its refinements, one drawn per step.
        refined_captions: JSONL written by ``usvl text refine`` from the captions (``source`` -> ``refined``).
        **kwargs: Arguments of :class:`~usvl.data.sources.synthetic.SyntheticDataModule` (``preset``, ``profile``,
            ``test_preset``, ...) and of :class:`~usvl.data.datamodule.UltrasoundDataModule` (``image_size``,
            ``batch_size``, ``few_shot``, ...). Labels stay: the zero-shot metrics of stage 1 read them.

    Raises:
        ValueError: ``caption_source`` is unknown, or needs ``refined_captions`` and has none.
    """

    def __init__(self, caption_source: Literal["lexicon", "refined", "both"] = "lexicon",
                 refined_captions: str | None = None, **kwargs: Any) -> None:
        if caption_source not in ("lexicon", "refined", "both"):
            raise ValueError(f"caption_source must be 'lexicon', 'refined' or 'both', not {caption_source!r}")
        if caption_source != "lexicon" and not refined_captions:
            raise ValueError(f"caption_source={caption_source!r} needs refined_captions (a `usvl text refine` JSONL)")
        super().__init__(**kwargs)
        self.caption_source = caption_source
        self.refined_captions = refined_captions

    def read_captions(self, manifest: pd.DataFrame) -> dict[str, list[str]]:
        """The lexicon captions from ``metadata.jsonl`` (and the test preset's), refined as ``caption_source`` says."""
        lexicon = read_metadata_captions(self.root)
        if self.test_data_root is not None:
            lexicon.update(read_metadata_captions(self.test_data_root))
        if self.caption_source == "lexicon":
            return {name: [text] for name, text in lexicon.items()}
        refinements = read_refinements(self.refined_captions)
        names = [str(name) for name in manifest["name"]]
        unrefined = sorted({lexicon[n] for n in names if n in lexicon and lexicon[n] not in refinements})
        if unrefined:
            log.warning("%d of %d distinct captions have no refinement in %s; their images keep the lexicon caption, "
                        "e.g. %r", len(unrefined), len({lexicon[n] for n in names if n in lexicon}),
                        self.refined_captions, unrefined[0])
        captions = {}
        for name, text in lexicon.items():
            refined = refinements.get(text, [])
            options = refined if self.caption_source == "refined" else [text, *refined]
            captions[name] = list(dict.fromkeys(options)) or [text]
        return captions


def read_caption_csv(path: str | Path, class_names: Sequence[str] | None = None,
                     image_root: str | Path | None = None) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Read a caption CSV into a manifest and the captions of each image.

    Header: an image column (``image_path``, ``image``, ``path``, ``file`` or ``filename``), a caption column
    (``caption``, ``text`` or ``report``), optionally ``label``, ``split`` and ``patient``. Image paths are relative to
    ``image_root`` (default: the CSV's folder) or absolute. An image on several rows has several captions (its first
    row gives its label, split and patient).

    Args:
        path: The CSV file.
        class_names: Maps labels given as names (or integer indices) to classes; None or empty: no labels.
        image_root: Folder the image paths are relative to.

    Returns:
        The manifest (names are the image paths as written) and ``{name: [caption, ...]}``.

    Raises:
        DatasetNotFoundError: The CSV does not exist.
        ValueError: The CSV is unparsable, lacks an image or caption column, or has an empty cell in either, or an
            unknown split; the message names file and line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} does not exist. Write a caption CSV with the header image_path,caption "
                                   "(+ optional label, split, patient), image paths relative to the CSV's folder.")
    image_column, table = read_table(path, one_of=IMAGE_COLUMNS)
    header = set(table[0][1]) if table else set()
    caption_column = next((c for c in CAPTION_COLUMNS if c in header), None)
    if caption_column is None:
        raise ValueError(f"{path}:1: the header has no caption column; name it one of {list(CAPTION_COLUMNS)}")
    base = Path(image_root).expanduser() if image_root else path.parent
    classes = list(class_names or [])
    rows: dict[str, dict[str, Any]] = {}
    captions: dict[str, list[str]] = {}
    for line, values in table:
        name, caption = values.get(image_column, ""), values.get(caption_column, "")
        if not name or not caption:
            raise ValueError(f"{path}:{line}: empty {image_column if not name else caption_column!r}")
        captions.setdefault(name, [])
        if caption not in captions[name]:
            captions[name].append(caption)
        if name in rows:
            continue
        image = Path(name).expanduser()
        raw = values.get("label") or None
        rows[name] = {
            "name": name,
            "image": str(absolute(image if image.is_absolute() else base / image)),
            "label": label_index(raw, classes) if classes else -1,
            "label_name": raw,
            "split": normalise_split(values.get("split"), f"{path}:{line}"),
            "patient": values.get("patient") or None,
        }
    return make_manifest(rows.values()), captions


class CaptionCSVDataModule(CaptionsMixin, UltrasoundDataModule):
    """Image-caption pairs from a CSV (``image_path,caption``), for real caption sets such as ROCO or MedPix.

    Splits given in the CSV are kept; the base module assigns the rest (grouped by ``patient``). Without
    ``class_names`` the set has no classes (stage 1 then reports retrieval only; the zero-shot metrics need labels).
    Licence and citation: those of the caption set.

    Args:
        csv: The caption CSV (see :func:`read_caption_csv`).
        image_root: Folder the image paths are relative to (default: the CSV's folder).
        class_names: Classes of the ``label`` column, in label order; empty: no labels.
        **kwargs: Arguments of :class:`~usvl.data.datamodule.UltrasoundDataModule` (``image_size``, ``batch_size``,
            ``split_fractions``, ``few_shot``, ...).
    """

    def __init__(self, csv: str, image_root: str | None = None, class_names: Sequence[str] = (),
                 **kwargs: Any) -> None:
        super().__init__(class_names=class_names, **kwargs)
        self.csv = csv
        self.image_root = image_root

    def read_manifest(self) -> pd.DataFrame:
        """Read the CSV (see :func:`read_caption_csv`), keeping its captions in :attr:`captions_by_name`."""
        manifest, self.captions_by_name = read_caption_csv(self.csv, self.class_names, self.image_root)
        return manifest

    def validate_manifest(self, manifest: pd.DataFrame, stage: str | None = None) -> pd.DataFrame:
        """Validate as the base module does; a set without classes has its image files checked but no labels."""
        return super().validate_manifest(manifest, stage if self.num_classes else "predict")
