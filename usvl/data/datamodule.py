"""UltrasoundDataModule: manifest -> splits (duplicate groups = patients) -> few-shot -> datasets -> loaders."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import pandas as pd
from torch.utils.data import DataLoader

from usvl.data.acquisition_augment import AcquisitionAugment
from usvl.data.bad_files import SKIPPED_FILES, BadFile, bad_files_error, write_skipped_files
from usvl.data.dataset import BAD_FILE_POLICIES, StreamingImageDataset, UltrasoundDataset
from usvl.data.decode import default_threads
from usvl.data.duplicates import (
    DEFAULT_THRESHOLD,
    GROUP_COLUMNS,
    Fingerprint,
    cross_split_duplicates,
    duplicate_groups,
    fingerprint_array,
    fingerprint_files,
    groups_frame,
    merge_duplicate_patients,
)
from usvl.data.manifest import REQUIRED_COLUMNS, SPLITS, cell_paths, normalise_manifest, skipped_files
from usvl.data.splits import (
    assign_splits,
    check_fractions,
    few_shot_subset,
    read_split_file,
    save_split_file,
    write_split_file,
)
from usvl.data.transforms import BatchAugment
from usvl.utils.atomic import write_csv_atomic

log = logging.getLogger(__name__)

CROSS_SPLIT_DUPLICATES = "cross_split_duplicates.csv"
"""The file name of the duplicate groups that span splits, in a run's log folder."""

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
"""The splits each Lightning stage uses (``predict`` uses ``predict_split``; no stage: all)."""


class UltrasoundDataModule(pl.LightningDataModule):
    """Base data module; subclasses implement :meth:`read_manifest` for one on-disk layout.

    :meth:`setup` runs, once: read the manifest (see :mod:`usvl.data.manifest`) -> validate it (files exist,
    labels in range, masks present for segmentation, except for ``predict``; ``on_bad_file`` decides) -> assign the
    missing splits (grouped by patient, each duplicate image group counting as one patient, stratified by label,
    official splits kept; see :mod:`usvl.data.splits`) or apply ``split_file`` -> take the ``few_shot`` subset of
    the training split -> decode the splits of the stage (``fit``: the test split too, see :meth:`decoded_splits`)
    -> warn about duplicate images across splits (possible only with given splits). The splits used are written as
    ``splits.csv`` into the trainer's log folder (when a logger is attached) and to ``split_file`` (when given and
    absent), never overwriting a different file; the duplicate groups merged into patients as
    ``duplicate_groups.csv`` beside it, the images skipped under ``on_bad_file="skip"`` as ``skipped_files.csv`` and
    the duplicate groups that span the given splits as ``cross_split_duplicates.csv``.

    Bad files (see :mod:`usvl.data.bad_files`) never reach a training step: every one is found before training
    starts (images are decoded into memory at setup; loader workers only index those arrays). Under
    ``on_bad_file="error"`` setup raises :class:`~usvl.data.bad_files.BadFilesError` naming them: first every
    missing file, missing mask, unknown label and file the reader skipped (a symlink loop), else every file that
    cannot be decoded or whose mask does not fit it. Under ``"skip"`` they are left out, named in warnings and
    listed in ``skipped_files.csv``. Duplicates across given splits are no bad files: both copies are named in a
    warning and kept, whatever ``on_bad_file`` says (a published split stays comparable).

    ``predict`` needs neither labels nor masks and streams its images
    (:class:`~usvl.data.dataset.StreamingImageDataset`: decoded one at a time, each batch carrying the images' paths
    and original sizes), so a folder of new images of any size predicts with flat memory.

    Only the splits a stage uses must be non-empty: ``usvl test`` runs on a dataset that holds only test images
    (an external test set). A dataset without any split (and no ``split_file``) is split as for ``fit`` unless
    ``eval_unsplit="all"``: then ``test``, ``validate`` and ``predict`` evaluate every image.

    Args:
        task: ``classification`` (labels) or ``segmentation`` (masks).
        class_names: Class names in label order.
        image_size: Side length images are resized to.
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation, test and predict (defaults to ``batch_size``).
        num_workers: DataLoader workers (images are decoded into memory once, so 0 is usually fastest).
        augment: Batched training augmentation, applied after the batch reaches the device.
        acquisition_augment: Batched acquisition augmentation (gain, TGC, dynamic range, speckle, blur, shadows,
            depth zoom, field-of-view masks; :class:`~usvl.data.acquisition_augment.AcquisitionAugment`) of
            training batches, applied before ``augment``. None (the default): off, batches are as without it.
        predict_split: Split used by ``predict``.
        split_fractions: Train, val and test fractions for images without an official split (non-negative, summing
            to 1). When only some splits are official, the rest is shared among the missing ones in these
            proportions (e.g. an official test split: train and val are carved at the train:val ratio).
        split_seed: Seed of the split assignment and of the few-shot subset.
        split_file: CSV (``name,split,patient``) of the splits: read and applied when it exists (it must list
            exactly the manifest's images; skipped bad files may be listed), else the splits used are written to it.
        few_shot: Percentage of the training split to train on, ``0 < few_shot <= 100`` (the paper uses 1, 2, 5,
            10, 20 and 50): stratified per class, grouped by patient, seeded by ``split_seed`` and nested (a
            smaller subset is contained in every larger one). Validation and test are unchanged. None: all.
        on_bad_file: ``"error"``: a missing file, a missing mask (segmentation), a label outside the classes
            (classification), a file the reader skipped (a symlink loop) or an undecodable file raises, naming the
            files. ``"skip"``: those images are dropped, counted in a warning and listed in :attr:`skip_list` (and
            in the run folder's ``skipped_files.csv``).
        decode_cache: Keep the decoded arrays in the disk cache (``usvl.data.decode_cache``) for later runs.
        group_duplicates: Before assigning splits, fingerprint every image and treat each exact or near duplicate
            group (:mod:`usvl.data.duplicates`) as one patient, so no group spans splits. Splits given by the
            source or ``split_file`` are kept (duplicates across them are warned about).
        eval_unsplit: For ``test``/``validate``/``predict`` on a dataset where no image has a split (and no
            ``split_file``): ``"assign"`` splits it as ``fit`` does (the stage uses its split), ``"all"`` gives
            every image to the stage's split (an external test set). None: the source's
            :attr:`default_eval_unsplit` (``"assign"``; a plain folder: ``"all"``).

    Attributes:
        manifest: The manifest in use (after validation, splits and few-shot), once set up.
        split_manifest: The manifest with its full splits, before the few-shot subset.
        skip_list: Every image left out under ``on_bad_file="skip"``: name, split (None when not assigned yet)
            and reason (:class:`~usvl.data.bad_files.BadFile`); :attr:`skipped` has their ``(name, reason)``.
        duplicates: Cross-split duplicate groups found among the datasets built so far (see
            :func:`usvl.data.duplicates.cross_split_duplicates`).
        duplicate_patients: The duplicate groups merged into one patient each before split assignment (one row
            per member, see :func:`usvl.data.duplicates.groups_frame`).
    """

    default_eval_unsplit: str = "assign"
    """What ``eval_unsplit=None`` means for this source."""

    def __init__(
        self,
        task: Literal["classification", "segmentation"] = "classification",
        class_names: Sequence[str] = ("benign", "malignant"),
        image_size: int = 224,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: BatchAugment | None = None,
        acquisition_augment: AcquisitionAugment | None = None,
        predict_split: Literal["train", "val", "test"] = "test",
        split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        split_file: str | None = None,
        few_shot: float | None = None,
        on_bad_file: Literal["error", "skip"] = "error",
        decode_cache: bool = True,
        group_duplicates: bool = True,
        eval_unsplit: Literal["assign", "all"] | None = None,
    ) -> None:
        super().__init__()
        if on_bad_file not in BAD_FILE_POLICIES:
            raise ValueError(f"on_bad_file must be one of {BAD_FILE_POLICIES}, not {on_bad_file!r}")
        eval_unsplit = eval_unsplit or self.default_eval_unsplit
        if eval_unsplit not in ("assign", "all"):
            raise ValueError(f"eval_unsplit must be 'assign' or 'all', not {eval_unsplit!r}")
        if few_shot is not None and not 0 < float(few_shot) <= 100:
            raise ValueError(f"few_shot must be a percentage in (0, 100], got {few_shot}")
        self.task = task
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.acquisition_augment = acquisition_augment
        self.predict_split = predict_split
        self.split_fractions = check_fractions(split_fractions)
        self.split_seed = split_seed
        self.split_file = split_file
        self.few_shot = few_shot
        self.on_bad_file = on_bad_file
        self.decode_cache = decode_cache
        self.group_duplicates = group_duplicates
        self.eval_unsplit = eval_unsplit
        self.duplicate_patients: pd.DataFrame = pd.DataFrame(columns=list(GROUP_COLUMNS))
        self.datasets: dict[str, UltrasoundDataset] = {}
        self.predict_dataset: StreamingImageDataset | None = None
        self.manifest: pd.DataFrame | None = None
        self.split_manifest: pd.DataFrame | None = None
        self.skip_list: list[BadFile] = []
        self.duplicates: pd.DataFrame = pd.DataFrame(columns=list(GROUP_COLUMNS))
        self._split_file_reused = False
        self._saved_split_dirs: set[str] = set()
        self._skips_reported: tuple[int, Path] | None = None
        self._fingerprints: dict[str, list[Fingerprint]] = {}

    def use_class_names(self, class_names: Sequence[str], origin: str) -> None:
        """Adopt the class names a model was trained with (e.g. from its checkpoint), before :meth:`setup`.

        Args:
            class_names: The class names in label order.
            origin: Where they come from, for the log and the error.

        Raises:
            ValueError: Their number differs from this data module's (the model was built for the data module's
                classes); the message names both lists.
        """
        names = [str(n) for n in class_names]
        if names == self.class_names:
            return
        if len(names) != self.num_classes:
            raise ValueError(f"The {origin} holds {len(names)} classes {names}, but the data module has "
                             f"{self.num_classes} {self.class_names}; pass --data.class_names '{names}'")
        if self.manifest is not None:
            raise ValueError(f"Class names from the {origin} arrive after the manifest was read")
        log.info("Class names %s from the %s (the data module had %s)", names, origin, self.class_names)
        self.class_names = names

    @abstractmethod
    def read_manifest(self) -> pd.DataFrame:
        """Read the dataset layout into a manifest.

        Columns ``name, image, mask, label, split, patient`` and optionally ``label_name``; see
        :mod:`usvl.data.manifest` for the contract.
        """

    def validate_manifest(self, manifest: pd.DataFrame, stage: str | None = None) -> pd.DataFrame:
        """Check the manifest's columns, names, files, masks and labels; raise or drop per ``on_bad_file``.

        Checked per image: the image file exists; for segmentation a mask is listed and its files exist; for
        classification the label is in ``[0, num_classes)``. Decoding problems are found later, by the dataset.
        For ``stage="predict"`` only the image files are checked (prediction needs no masks and no labels).

        Returns:
            The normalised manifest (see :func:`usvl.data.manifest.normalise_manifest`), without the bad rows under
            ``on_bad_file="skip"`` (those are added to :attr:`skip_list` and logged). Files the reader skipped
            (:func:`usvl.data.manifest.skipped_files`, e.g. symlink loops) are added to :attr:`skip_list` too.

        Raises:
            ValueError: A required column is missing or names repeat.
            BadFilesError: Bad rows or files the reader skipped, under ``on_bad_file="error"``; the message names
                every one (up to 20) and says what to do.
        """
        missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
        if missing:
            raise ValueError(f"Manifest lacks columns {missing}")
        unreadable = [BadFile(name, None, f"skipped by the reader: {reason}")
                      for name, reason in skipped_files(manifest)]
        if unreadable and self.on_bad_file == "skip":
            self._record_skipped(unreadable, len(manifest) + len(unreadable), why="unreadable, skipped by the reader")
        manifest = normalise_manifest(manifest)
        names = manifest["name"].astype(str)
        repeated = sorted(set(names[names.duplicated()]))
        if repeated:
            raise ValueError(f"Manifest names must be unique; {len(repeated)} repeat: {repeated[:20]}")
        problems: list[tuple[int, str, str]] = []
        for position, row in enumerate(manifest.itertuples(index=False)):
            name = str(row.name)
            image = cell_paths(row.image)
            if not image:
                problems.append((position, name, "no image path"))
            elif not Path(image[0]).is_file():
                problems.append((position, name, f"image file missing: {image[0]}"))
            if stage == "predict":
                continue
            if self.task == "segmentation":
                masks = cell_paths(row.mask)
                absent = [m for m in masks if not Path(m).is_file()]
                if not masks:
                    problems.append((position, name, "no mask"))
                elif absent:
                    problems.append((position, name, f"mask file missing: {', '.join(absent)}"))
            elif not 0 <= int(row.label) < self.num_classes:
                raw = f" (label_name {row.label_name!r})" if row.label_name is not None else ""
                problems.append((position, name, f"label {int(row.label)}{raw} outside 0..{self.num_classes - 1} "
                                                 f"{self.class_names}"))
        splits = manifest["split"].tolist()
        bad = [BadFile(name, splits[position], reason) for position, name, reason in problems]
        if self.on_bad_file == "error" and (bad or unreadable):
            raise bad_files_error(bad + unreadable, len(manifest) + len(unreadable))
        if not bad:
            return manifest
        self._record_skipped(bad, len(manifest))
        positions = {position for position, _, _ in problems}
        return manifest[[i not in positions for i in range(len(manifest))]].reset_index(drop=True)

    def _record_skipped(self, skipped: list[BadFile], total: int, why: str = "on_bad_file='skip'") -> None:
        """Add ``skipped`` to :attr:`skip_list` and name every one in a warning."""
        if not skipped:
            return
        self.skip_list.extend(skipped)
        log.warning("Skipped %d of %d images (%s); %d skipped in all so far:\n%s", len(skipped), total, why,
                    len(self.skip_list), "\n".join(f"  {item.describe()}" for item in skipped))

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """``(name, reason)`` of every image left out under ``on_bad_file="skip"`` (see :attr:`skip_list`)."""
        return [(item.name, item.reason) for item in self.skip_list]

    def stage_splits(self, stage: str | None) -> tuple[str, ...]:
        """The splits a Lightning stage uses (all three for no stage)."""
        if stage == "predict":
            return (self.predict_split,)
        return STAGE_SPLITS.get(stage or "", SPLITS)

    def prepare_manifest(self, stage: str | None = None) -> pd.DataFrame:
        """Read, validate, split and subset the manifest (once; cached in :attr:`manifest`).

        Args:
            stage: The Lightning stage it is prepared for; only the splits it uses must be non-empty (None: all).

        Raises:
            ValueError: A split the stage uses is empty (and has a non-zero fraction, or comes from a split file),
                or the split file does not match.
        """
        if self.manifest is not None:
            return self.manifest
        manifest = self.validate_manifest(self.read_manifest(), stage)
        needed = self.stage_splits(stage)
        split_path = Path(self.split_file) if self.split_file else None
        if split_path is not None and split_path.is_file():
            manifest = read_split_file(split_path, manifest, ignore=[name for name, _ in self.skipped])
            self._split_file_reused = True
            log.info("Using the splits of %s", split_path)
        elif self.eval_unsplit == "all" and "train" not in needed and manifest["split"].isna().all():
            log.warning("No image of the %d has a split: all are used as the %s split (eval_unsplit='all', an external "
                        "set). If the model was trained on these images, pass the run's splits.csv as split_file "
                        "or set eval_unsplit='assign'.", len(manifest), needed[0])
            manifest = manifest.assign(split=needed[0])
        else:
            assigned = assign_splits(self._group_duplicates(manifest), self.split_fractions, self.split_seed)
            manifest = assigned.assign(patient=manifest["patient"].to_numpy())  # merged ids only steer the split
        for split, fraction in zip(SPLITS, self.split_fractions, strict=True):
            if not (manifest["split"] == split).any():
                message = f"The {split} split is empty ({len(manifest)} images, fractions {self.split_fractions})"
                if split not in needed:
                    log.info("%s; stage %s does not use it", message, stage)
                elif fraction > 0 or self._split_file_reused:
                    raise ValueError(message)
                else:
                    log.warning(message)
        self.split_manifest = manifest
        if split_path is not None and not self._split_file_reused and self._is_global_zero():
            write_split_file(manifest, split_path)
            log.info("Wrote the splits to %s", split_path)
        if self.few_shot is not None and (manifest["split"] == "train").any():
            manifest = few_shot_subset(manifest, self.few_shot, self.split_seed)
            log.info("Few-shot: training on %d of %d training images (%g %%, seed %d)",
                     int((manifest["split"] == "train").sum()), int((self.split_manifest["split"] == "train").sum()),
                     self.few_shot, self.split_seed)
        self.manifest = manifest
        counts = manifest.groupby(["split", "label"]).size().to_dict()
        log.info("Manifest: %d images; per (split, label): %s", len(manifest), counts)
        return manifest

    def _group_duplicates(self, manifest: pd.DataFrame) -> pd.DataFrame:
        """The manifest with each duplicate group as one patient, when some splits are to be assigned.

        Fills :attr:`duplicate_patients` and logs how many groups were merged. The merged patient ids only steer
        :func:`~usvl.data.splits.assign_splits`; :meth:`prepare_manifest` keeps the source's own patient ids.
        """
        if not self.group_duplicates or not manifest["split"].isna().any():
            return manifest
        images = [next(iter(cell_paths(cell)), "") for cell in manifest["image"]]
        fingerprints = fingerprint_files(images, default_threads())
        grouped, members = merge_duplicate_patients(manifest, fingerprints, DEFAULT_THRESHOLD)
        self.duplicate_patients = members
        if members.empty:
            return manifest
        merged = sum(str(p).startswith("duplicates:") for p in set(grouped["patient"]))
        log.info("Duplicate images: %d groups (%d images; %s) merged into %d patient groups before assigning splits, "
                 "so no group spans splits", members["group"].nunique(), members["name"].nunique(),
                 members.drop_duplicates("group")["kind"].value_counts().to_dict(), merged)
        return grouped

    def _is_global_zero(self) -> bool:
        trainer = self.trainer
        return trainer is None or trainer.is_global_zero

    def save_splits(self, folder: str | Path) -> Path | None:
        """Write ``splits.csv`` to ``folder``; an identical existing file is kept, a different one raises.

        With ``few_shot`` set, ``few_shot.csv`` (``name,patient`` of the training images used) is written too;
        when duplicate groups were merged into patients, ``duplicate_groups.csv`` (one row per member).

        Returns:
            The split file's path (None on non-zero ranks, which write nothing).

        Raises:
            ValueError: ``folder/splits.csv`` exists with other splits (and is not the reused ``split_file``).
        """
        self.prepare_manifest()
        manifest = self.split_manifest
        assert manifest is not None
        if not self._is_global_zero():
            return None
        path = Path(folder) / "splits.csv"
        reused = self.split_file if self._split_file_reused else None
        if save_split_file(manifest, path, reused=reused):
            log.info("Wrote the splits used to %s", path)
        if self.few_shot is not None and self.manifest is not None:
            train = self.manifest[self.manifest["split"] == "train"]
            write_csv_atomic(Path(folder) / "few_shot.csv", train[["name", "patient"]])
        if not self.duplicate_patients.empty:
            write_csv_atomic(Path(folder) / "duplicate_groups.csv", self.duplicate_patients)
        return path

    def decoded_splits(self, stage: str | None) -> tuple[str, ...]:
        """The splits :meth:`setup` decodes for a stage: those it uses, and for ``fit`` the test split too.

        ``fit`` decodes the test split (when it has images) so that a bad test file, or a test image duplicating a
        training image, is reported before the first training step rather than after training; the test after
        ``usvl fit`` reuses it.
        """
        splits = self.stage_splits(stage)
        return (*splits, "test") if stage == "fit" and "test" not in splits else splits

    def setup(self, stage: str | None = None) -> None:
        """Prepare the manifest once, save the splits next to the run, and decode the splits of the stage.

        Every image of the splits :meth:`decoded_splits` names is decoded before training starts. Under
        ``on_bad_file="error"`` one :class:`~usvl.data.bad_files.BadFilesError` names every file that cannot be
        decoded (and its split); under ``"skip"`` they are left out, named in a warning and, with a logger, listed
        in ``skipped_files.csv`` in the trainer's log folder (see :meth:`write_run_records`).

        Raises:
            BadFilesError: Bad files under ``on_bad_file="error"``.
        """
        manifest = self.prepare_manifest(stage)
        folder = self._log_dir()
        if folder is not None and folder not in self._saved_split_dirs:
            self.save_splits(folder)
            self._saved_split_dirs.add(folder)
        if stage == "predict":
            rows = manifest[manifest["split"] == self.predict_split].reset_index(drop=True)
            self.predict_dataset = StreamingImageDataset(rows, self.image_size, on_bad_file=self.on_bad_file,
                                                         block_size=self.eval_batch_size)
        else:
            self._build_datasets(manifest, stage)
        if folder is not None:
            self.write_run_records(folder)

    def _log_dir(self) -> str | None:
        """The trainer's log folder, None without a trainer or logger (every rank must ask: it broadcasts)."""
        trainer = self.trainer
        return trainer.log_dir if trainer is not None and len(trainer.loggers) > 0 else None

    def _build_datasets(self, manifest: pd.DataFrame, stage: str | None) -> None:
        """Decode the splits of ``stage`` not built yet; raise naming every bad file, or record them, per policy."""
        built: dict[str, UltrasoundDataset] = {}
        bad: list[BadFile] = []
        looked_at = 0
        for split in self.decoded_splits(stage):
            rows = manifest[manifest["split"] == split].reset_index(drop=True)
            if split in self.datasets or (rows.empty and split not in self.stage_splits(stage)):
                continue
            dataset = UltrasoundDataset(rows, self.image_size, with_masks=self.task == "segmentation",
                                        on_bad_file="skip", cache=self.decode_cache, warn=False)
            found = [BadFile(name, split, reason) for name, reason in dataset.skipped]
            if self.on_bad_file == "error":
                bad += found
                looked_at += len(rows)
            else:
                self._record_skipped(found, len(rows))
            built[split] = dataset
        if bad:
            raise bad_files_error(bad, looked_at)
        self.datasets.update(built)
        if built:
            self._check_duplicates()

    def write_run_records(self, folder: str | Path) -> None:
        """Write what the data module left out or found into a run's log folder (on global rank zero only).

        ``skipped_files.csv`` (columns ``name``, ``split``, ``reason``; see :mod:`usvl.data.bad_files`) under
        ``on_bad_file="skip"``, also when nothing was skipped; ``cross_split_duplicates.csv`` (one row per member,
        see :func:`usvl.data.duplicates.groups_frame`) when duplicate images span the splits.
        """
        if not self._is_global_zero():
            return
        if self.on_bad_file == "skip":
            path = write_skipped_files(Path(folder) / SKIPPED_FILES, self.skip_list)
            if self.skip_list and self._skips_reported != (len(self.skip_list), path):
                log.warning("%d images skipped in all (on_bad_file='skip'), listed in %s", len(self.skip_list), path)
                self._skips_reported = (len(self.skip_list), path)
        if not self.duplicates.empty:
            write_csv_atomic(Path(folder) / CROSS_SPLIT_DUPLICATES, self.duplicates)

    def _check_duplicates(self) -> None:
        """Fingerprint the new datasets' decoded arrays and warn about duplicate groups that span splits."""
        for split, dataset in self.datasets.items():
            if split not in self._fingerprints:
                self._fingerprints[split] = [fingerprint_array(image[0].numpy()) for image in dataset.images]
        if len(self._fingerprints) < 2:
            return
        names: list[str] = []
        splits: list[str] = []
        fingerprints: list[Fingerprint] = []
        for split, prints in self._fingerprints.items():
            names += [str(n) for n in self.datasets[split].names]
            splits += [split] * len(prints)
            fingerprints += prints
        table = pd.DataFrame({"name": names, "split": splits})
        groups = cross_split_duplicates(groups_frame(duplicate_groups(fingerprints), table, fingerprints))
        previous = _group_members(self.duplicates)
        self.duplicates = groups
        lines = [f"  {members['kind'].iloc[0]}: " + ", ".join(f"{n} [{s}]" for n, s in
                                                              zip(members["name"], members["split"], strict=True))
                 for _, members in groups.groupby("group") if tuple(sorted(members["name"])) not in previous]
        if lines:
            per_kind = groups.drop_duplicates("group")["kind"].value_counts().to_dict()
            log.warning("%d duplicate groups span the splits %s (%s; compared at %d px), which leaks evaluation "
                        "images into training:\n%s\nThe given splits are kept (and the groups listed in %s in the "
                        "run folder). To remove the leak, delete all but one image of each group, or leave their "
                        "split empty so that the data module assigns it, each group as one patient.",
                        len(lines), sorted(self._fingerprints), per_kind, self.image_size, "\n".join(lines),
                        CROSS_SPLIT_DUPLICATES)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return self._dataloader(self.datasets[split], shuffle)

    def _dataloader(self, dataset: UltrasoundDataset | StreamingImageDataset, shuffle: bool) -> DataLoader:
        """A loader of ``dataset``; batches and the global random stream do not depend on ``num_workers``.

        Items draw no random numbers (augmentation runs on whole batches in the main process, see
        :meth:`on_after_batch_transfer`) and the shuffling order comes from the global torch generator. Workers are
        not persistent: a persistent loader draws its workers' base seed from that generator in the first epoch
        only, while a loader without workers (and a fit resumed from a checkpoint) draws it every epoch, which
        would shift every later shuffle and augmentation.
        """
        return DataLoader(
            dataset,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            drop_last=shuffle and len(dataset) > self.batch_size,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Streamed batches of the ``predict_split`` (see :class:`~usvl.data.dataset.StreamingImageDataset`)."""
        if self.predict_dataset is None:
            self.setup("predict")
        return self._dataloader(self.predict_dataset, shuffle=False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Apply the batched augmentations (acquisition, then ``augment``) to training batches only."""
        training = self.trainer is not None and self.trainer.training
        if self.acquisition_augment is not None and training:
            batch["image"], mask = self.acquisition_augment(batch["image"], batch.get("mask"))
            if mask is not None:
                batch["mask"] = mask
        if self.augment is not None and training:
            batch["image"], mask = self.augment(batch["image"], batch.get("mask"))
            if mask is not None:
                batch["mask"] = mask
        return batch

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class name (after the few-shot subset)."""
        self.prepare_manifest()
        assert self.manifest is not None
        counts: dict[str, dict[str, int]] = {}
        for (split, label), n in self.manifest.groupby(["split", "label"]).size().items():
            name = self.class_names[int(label)] if 0 <= label < self.num_classes else str(label)
            counts.setdefault(split, {})[name] = int(n)
        return counts


def _group_members(groups: pd.DataFrame) -> set[tuple[str, ...]]:
    """The sorted member names of each group of a duplicates table."""
    return {tuple(sorted(members["name"])) for _, members in groups.groupby("group")} if len(groups) else set()
