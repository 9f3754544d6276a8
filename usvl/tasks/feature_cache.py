"""Frozen-feature cache: the frozen image tower runs once per image when nothing before the head changes.

A linear probe (no adapter: only the projections and the head train) and zero-shot evaluation feed the head the same
tower output for an image in every epoch and every run. The classification tasks
(:class:`~usvl.tasks.calibrated.CalibratedClassifier`, switch ``feature_cache``) then keep that output: the pooled
features the tower computes before the trainable image projection
(:meth:`~usvl.models.encoders.base.VisionLanguageEncoder.tower_features`), in one table per split and view (the image;
with ``test_time_flip`` also its mirror image). A table fills as batches pass (the first epoch encodes each image in
its own step, as without the cache); once it holds every image of its split it is written to
``usvl.paths.cache_dir() / "features"``, and later epochs, stages and runs read it instead of encoding.

Safe (:func:`feature_cache_blockers`) means the features of an image cannot change while the stage runs and the head
reads only them: in ``fit`` no parameter before the head trains (no adapter, frozen tower; the ``*_projection``
layers come after the cache), no training augmentation changes the pixels (``data.augment`` is null), and no module
of the image tower follows training mode (dropout, batch-norm statistics as with ``norm_stats: adapt``); in every
stage the head reads the pooled features only (not the feature maps) and the data module keeps decoded datasets.
``validate`` and ``test`` train nothing, so the features are fixed whatever the adapter (zero-shot with stage-1
adapters). ``predict`` streams its images and never uses the cache.

A table's key (:func:`table_key`) hashes everything its features depend on: the encoder (id, class, settings, the
fingerprint of its weight files as for the text cache, and a digest of every tensor of the image tower, adapters and
batch-norm statistics included), the adapter, the input (the digest of the split's names and decoded pixels, which
is stricter than the decoded-image cache's file stamps and exists without that cache; image size, normalisation,
memory format), the view, the precision, the device type and the torch version. Files are
``<identity>-<key>.pt``, where ``identity`` leaves out the weights and the pixels, so writing an entry deletes the
stale ones of the same split and setting. They are written atomically (:func:`usvl.utils.atomic.atomic_output`: a
temporary file beside the target, flushed, renamed over it) and checked when read (format, key, names, shape, floating
dtype, finite values); a corrupt or foreign file is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from usvl.paths import cache_dir
from usvl.tasks.base import describe_adapter
from usvl.utils.atomic import atomic_output

log = logging.getLogger(__name__)

FORMAT = 1
"""Version of the cache file layout; files of another version are rebuilt."""


class FeatureCacheRefusedError(ValueError):
    """``feature_cache=True`` was asked for where the frozen image features would not be the same every epoch."""


def check_switch(value: bool | str) -> bool | str:
    """Validate a ``feature_cache`` value (``"auto"``, ``True`` or ``False``) and return it.

    Raises:
        ValueError: Any other value.
    """
    if not (value is True or value is False or value == "auto"):
        raise ValueError(f"feature_cache must be 'auto', true or false, not {value!r}")
    return value


def default_root() -> Path:
    """Folder of the frozen-feature cache: ``usvl.paths.cache_dir() / "features"``."""
    return cache_dir() / "features"


def trainable_before_head(encoder: nn.Module) -> list[str]:
    """Names of the encoder's trainable parameters that act before the cached features (all but ``*_projection``)."""
    return [name for name, parameter in encoder.named_parameters()
            if parameter.requires_grad and not name.split(".")[0].endswith("_projection")]


def tower_modules_in_training_mode(encoder: nn.Module) -> list[str]:
    """Modules of the image tower that would run in training mode while the model trains (dropout, batch norm...).

    The encoder is switched to training mode and every module's mode is restored afterwards.
    """
    tower = encoder.get_submodule(getattr(encoder, "image_tower_path", "image_tower"))
    modes = {module: module.training for module in encoder.modules()}
    try:
        encoder.train(True)
        return [f"{name} ({type(module).__name__})" for name, module in tower.named_modules() if module.training]
    finally:
        for module, training in modes.items():
            module.training = training


def feature_cache_blockers(task: Any, datamodule: Any, stage: str) -> list[str]:
    """Why the frozen image features are not safe to cache in ``stage`` (``fit``, ``validate``, ``test``).

    Args:
        task: The classification task (its ``encoder`` and ``reads_feature_maps``).
        datamodule: The data module (its ``datasets`` and ``augment``).
        stage: The Lightning stage.

    Returns:
        One sentence per reason; empty when the cache is safe.
    """
    blockers = []
    if task.reads_feature_maps:
        blockers.append("the head reads the feature maps, and only pooled features are cached")
    if not isinstance(getattr(datamodule, "datasets", None), dict):
        blockers.append("the data module keeps no decoded datasets to key the features by")
    if stage != "fit":
        return blockers
    trainable = trainable_before_head(task.encoder)
    if trainable:
        blockers.append(f"{len(trainable)} parameters before the head train (adapters or tower, e.g. {trainable[0]})")
    if getattr(datamodule, "augment", None) is not None:
        blockers.append("training augmentation (data.augment) changes the pixels every epoch")
    training = tower_modules_in_training_mode(task.encoder)
    if training:
        blockers.append(f"{len(training)} modules of the image tower follow training mode (e.g. {training[0]}; "
                        "batch-norm statistics adapted, dropout)")
    return blockers


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def tensors_digest(module: nn.Module) -> str:
    """A digest of every parameter and buffer of ``module``: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def pixels_digest(names: Sequence[str], images: torch.Tensor) -> str:
    """A digest of a split's image names, in order, and of its decoded images (the encoder's exact input)."""
    digest = hashlib.sha256(json.dumps(list(names)).encode("utf-8"))
    digest.update(images.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def encoder_settings(encoder: nn.Module) -> dict[str, Any]:
    """The encoder's public settings of simple types (taps, pooling, widths...), which shape its pooled features."""
    simple = (bool, int, float, str)
    settings = {}
    for name, value in vars(encoder).items():
        if name.startswith("_") or name == "training":
            continue
        if isinstance(value, simple) or (isinstance(value, list | tuple) and all(isinstance(v, simple) for v in value)):
            settings[name] = list(value) if isinstance(value, list | tuple) else value
    return settings


def table_key(setting: dict[str, Any], weights: dict[str, str], split: str, view: str, names: Sequence[str],
              images: torch.Tensor) -> tuple[str, str]:
    """The identity and the key of one table.

    Args:
        setting: What does not depend on the weights or the pixels (encoder id and settings, adapter, input
            normalisation, precision, device type).
        weights: The weight files' fingerprint and the image tower's tensor digest.
        split: The split's name.
        view: ``image`` or ``flip``.
        names: The split's image names, in order.
        images: The split's decoded images ``uint8 [N, 1, S, S]``.

    Returns:
        ``identity`` (the same for every version of this split's table in this setting) and ``key`` (which
        changes with the weights, the pixels and the torch version).
    """
    identity = _digest({"format": FORMAT, **setting, "split": split, "view": view, "size": list(images.shape[-2:]),
                        "names": _digest(list(names))})
    key = _digest({"identity": identity, **weights, "pixels": pixels_digest(names, images),
                   "torch": torch.__version__})
    return identity[:16], key[:24]


class FeatureTable:
    """The pooled tower features of one split and view, filled batch by batch or read from disk.

    Args:
        names: The split's image names, in order (unique).
        path: The cache file.
        key: The key the file must carry.
        record: What the file records besides the features (split, view, encoder, ...).
    """

    def __init__(self, names: Sequence[str], path: Path, key: str, record: dict[str, Any]) -> None:
        self.names = [str(name) for name in names]
        self.index = {name: row for row, name in enumerate(self.names)}
        self.path = path
        self.key = key
        self.record = record
        self.features: torch.Tensor | None = None
        self.filled = torch.zeros(len(self.names), dtype=torch.bool)
        self.hit = False
        self.written = False

    def load(self) -> bool:
        """Read the file when it is a valid entry of this table; a corrupt or foreign file is reported and ignored.

        Returns:
            Whether the features were read.
        """
        if not self.path.is_file():
            return False
        try:
            record = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001  (any unreadable file is rebuilt: truncated, not a zip, pickle error)
            problem = f"unreadable ({type(error).__name__}: {str(error)[:200]})"
        else:
            problem = self._invalid(record)
            if problem is None:
                self.features = record["features"]
                self.filled[:] = True
                self.hit = self.written = True
                return True
        log.warning("Frozen-feature cache %s is %s; encoding the images again and replacing it", self.path, problem)
        return False

    def _invalid(self, record: Any) -> str | None:
        """Why a loaded record does not fit this table, or ``None`` when it does."""
        if not isinstance(record, dict) or not isinstance(record.get("features"), torch.Tensor):
            return "not a frozen-feature cache record"
        if record.get("format") != FORMAT or record.get("key") != self.key:
            return f"of another format or key (format {record.get('format')}, key {record.get('key')})"
        if record.get("names") != self.names:
            return "for other images"
        features = record["features"]
        if features.ndim != 2 or features.shape[0] != len(self.names) or features.shape[1] == 0:
            return f"of shape {tuple(features.shape)}, expected ({len(self.names)}, channels)"
        if not features.is_floating_point():
            return f"of dtype {features.dtype}, expected a floating dtype"
        if not torch.isfinite(features).all():
            return "holding non-finite values"
        return None

    def pooled(self, names: Sequence[str], encode: Callable[[torch.Tensor], torch.Tensor],
               device: torch.device) -> torch.Tensor:
        """The features ``[B, C]`` of a batch's images, encoding (``encode(selection)``) those not in the table yet.

        Args:
            names: The batch's image names.
            encode: Pooled tower features of the batch's images selected by a boolean mask ``[B]``.
            device: Where the features are returned.

        Raises:
            RuntimeError: An image is not in the split the table was built for.
        """
        try:
            rows = torch.tensor([self.index[str(name)] for name in names], dtype=torch.long)
        except KeyError as error:
            raise RuntimeError(f"Image {error.args[0]!r} is not in the {self.record['split']} split of the "
                               "frozen-feature cache") from error
        missing = ~self.filled[rows]
        if bool(missing.any()):
            fresh = encode(missing.to(device)).detach()
            if self.features is None:
                self.features = fresh.new_zeros((len(self.names), fresh.shape[1]))
            self.features[rows[missing].to(self.features.device)] = fresh.to(self.features.dtype)
            self.filled[rows[missing]] = True
            if not self.written and bool(self.filled.all()):
                self.save()
        if self.features.device != device:
            self.features = self.features.to(device)
        return self.features[rows.to(device)]

    def save(self) -> None:
        """Write the complete table atomically and delete stale entries of the same identity; failures only warn."""
        self.written = True
        record = {"format": FORMAT, "key": self.key, "names": self.names, "features": self.features.detach().cpu(),
                  "created": datetime.now(UTC).isoformat(timespec="seconds"), **self.record}
        try:
            with atomic_output(self.path) as temporary:
                torch.save(record, temporary)
        except OSError as error:
            log.warning("Could not write the frozen-feature cache %s: %s", self.path, error)
            return
        log.info("Frozen-feature cache written: %d images (%s, %s) to %s", len(self.names), self.record["split"],
                 self.record["view"], self.path)
        identity = self.path.name.split("-")[0]
        for stale in self.path.parent.glob(f"{identity}-*.pt"):
            if stale != self.path:
                stale.unlink(missing_ok=True)
                log.debug("Removed stale frozen-feature cache file %s", stale)


class FrozenFeatures:
    """The feature tables of one stage, by split and view; a batch's images are found by name.

    Args:
        tables: The tables, keyed by ``(split, view)``.
    """

    def __init__(self, tables: dict[tuple[str, str], FeatureTable]) -> None:
        self.tables = tables
        self.split_of = {name: split for (split, _), table in tables.items() for name in table.names}

    def pooled(self, names: Sequence[str], view: str, encode: Callable[[torch.Tensor], torch.Tensor],
               device: torch.device) -> torch.Tensor | None:
        """The batch's cached features in ``view`` (see :meth:`FeatureTable.pooled`); ``None`` when not covered."""
        if not names:
            return None
        table = self.tables.get((self.split_of.get(str(names[0]), ""), view))
        return None if table is None else table.pooled(names, encode, device)

    def summary(self) -> dict[str, Any]:
        """Per table (``split/view``): its file, and whether it was read from disk."""
        return {f"{split}/{view}": {"path": str(table.path), "hit": table.hit, "images": len(table.names)}
                for (split, view), table in self.tables.items()}


def open_frozen_features(task: Any, trainer: Any, stage: str, root: Path | None = None) -> FrozenFeatures | None:
    """The frozen-feature tables of ``stage`` when the task's ``feature_cache`` switch and the safety rules allow.

    ``feature_cache=False``: none. ``"auto"``: none when :func:`feature_cache_blockers` finds a reason, logged.
    ``True``: as ``auto``, but a reason raises. Tables found on disk are read; the others fill as batches pass.

    Args:
        task: The classification task (``encoder``, ``adapter``, ``feature_cache``, ``test_time_flip``, ...).
        trainer: The trainer (its data module and precision).
        stage: ``fit``, ``validate`` or ``test``.
        root: Cache folder (default :func:`default_root`).

    Raises:
        FeatureCacheRefusedError: ``feature_cache=True`` where it is not safe; the message says why.
    """
    switch = task.feature_cache
    if switch is False:
        log.info("Frozen-feature cache off (model.feature_cache=false)")
        return None
    datamodule = trainer.datamodule
    blockers = feature_cache_blockers(task, datamodule, stage)
    if blockers:
        reasons = "; ".join(blockers)
        if switch is True:
            raise FeatureCacheRefusedError(
                f"model.feature_cache=true, but the frozen image features are not safe to cache in {stage}: "
                f"{reasons}. Set model.init_args.feature_cache to auto (on where safe) or false.")
        log.info("Frozen-feature cache off in %s: %s", stage, reasons)
        return None
    encoder = task.encoder
    setting = {"encoder": encoder.encoder_id, "encoder_class": f"{type(encoder).__module__}.{type(encoder).__name__}",
               "settings": encoder_settings(encoder), "adapter": describe_adapter(task.adapter),
               "mean": list(encoder.image_mean), "std": list(encoder.image_std),
               "intensity_standardisation": task.intensity_standardisation,
               "memory_format": str(task.memory_format), "precision": str(trainer.precision),
               "device": task.device.type}
    weights = {"weights_fingerprint": str(getattr(encoder, "weights_fingerprint", "none")),
               "tower": tensors_digest(encoder.get_submodule(encoder.image_tower_path))}
    folder = root or default_root()
    tables = {}
    for split in datamodule.stage_splits(stage):
        dataset = datamodule.datasets.get(split)
        if dataset is None or not len(dataset):
            continue
        views = ("image",) if split == "train" or not task.test_time_flip else ("image", "flip")
        for view in views:
            identity, key = table_key(setting, weights, split, view, dataset.names, dataset.images)
            record = {"split": split, "view": view, "encoder": encoder.encoder_id, **weights}
            table = FeatureTable(dataset.names, folder / f"{identity}-{key}.pt", key, record)
            table.load()
            tables[(split, view)] = table
    features = FrozenFeatures(tables)
    read = [name for name, entry in features.summary().items() if entry["hit"]]
    log.info("Frozen-feature cache on in %s (%s): %s", stage, "asked" if switch is True else "auto: safe",
             ", ".join(f"{name} {'read from disk' if name in read else 'encoded as batches pass'}"
                       for name in features.summary()) or "no images")
    return features
