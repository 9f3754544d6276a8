"""Rebuild a trained task from a run's ``config.yaml`` and one of its checkpoints, as ``usvl test`` does."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser

import usvl.data
import usvl.models.adapters
import usvl.models.encoders
import usvl.models.heads
import usvl.tasks  # noqa: F401  (short class names in configs)
from usvl.tasks.base import AdaptedEncoderTask


def read_run_config(config: str | Path) -> dict[str, Any]:
    """The run config (the ``config.yaml`` that ``usvl fit`` saved in the run's folder) as a mapping.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file has no ``model`` section.
    """
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"Run config {path} not found: pass the config.yaml that usvl fit saved in the run "
                                "folder (e.g. runs/thyroid_cls/version_0/config.yaml)")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise ValueError(f"{path} has no model section: pass the config.yaml that usvl fit saved in the run folder")
    return raw


def config_image_size(raw: dict[str, Any]) -> tuple[int, int] | None:
    """``(height, width)`` from the config's ``data.init_args.image_size`` (an int or a pair), or ``None``."""
    size = ((raw.get("data") or {}).get("init_args") or {}).get("image_size")
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_task(raw: dict[str, Any], class_names: list[str] | None) -> LightningModule:
    """Instantiate the config's model section with jsonargparse, like the ``usvl`` CLI.

    With ``class_names`` (stored in the checkpoint) the model gets them directly and the data section is not built,
    so exporting needs no dataset. Without them the data module is built and linked to the model, as in ``usvl``.
    """
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    model = copy.deepcopy(raw["model"])
    values: dict[str, Any] = {"model": model}
    if class_names:
        model.setdefault("init_args", {}).update(num_classes=len(class_names), class_names=list(class_names))
    else:
        if not isinstance(raw.get("data"), dict):
            raise ValueError("The checkpoint stores no class names and the config has no data section to take "
                             "them from")
        parser.add_subclass_arguments(LightningDataModule, "data", required=True)
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")
        values["data"] = copy.deepcopy(raw["data"])
    namespace = parser.parse_object(values)
    return parser.instantiate(namespace).model


def load_task(config: str | Path, ckpt_path: str | Path) -> AdaptedEncoderTask:
    """The trained task of a run, in eval mode: built from ``config``, trainable weights and text from ``ckpt_path``.

    Frozen towers come from their packages (or seeded random init for the test encoders), exactly as for
    ``usvl test --config RUN/config.yaml --ckpt_path CKPT``.

    Args:
        config: The run's ``config.yaml``.
        ckpt_path: A checkpoint of that run (``checkpoints/*.ckpt``).

    Raises:
        FileNotFoundError: A file is missing.
        TypeError: The model is not a usvl task (a frozen encoder with adapters and a head).
        ValueError: The checkpoint does not fit the config (other encoder, unknown weights).
        KeyError: The checkpoint lacks trainable weights of the model.
    """
    raw = read_run_config(config)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"Checkpoint {ckpt_path} not found: pass one of the run's checkpoints/*.ckpt")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    stored = checkpoint.get("usvl", {})
    task = build_task(raw, stored.get("class_names"))
    if not isinstance(task, AdaptedEncoderTask):
        raise TypeError(f"Only usvl tasks (ClassificationTask, SegmentationTask) can be exported, not "
                        f"{type(task).__name__}")
    encoder_id = stored.get("encoder_id")
    if encoder_id and encoder_id != task.encoder.encoder_id:
        raise ValueError(f"Checkpoint {ckpt_path} was trained with encoder {encoder_id}, the config builds "
                         f"{task.encoder.encoder_id}: pass the config.yaml of the run that wrote the checkpoint")
    task.on_load_checkpoint(checkpoint)
    result = task.load_state_dict(checkpoint["state_dict"], strict=False)
    if result.unexpected_keys:
        raise ValueError(f"Checkpoint {ckpt_path} holds {len(result.unexpected_keys)} weights the config's model "
                         f"lacks, e.g. {result.unexpected_keys[:5]}: pass the config.yaml of the run that wrote it")
    return task.eval()
