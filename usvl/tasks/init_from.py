"""Stage-2 initialisation from a stage-1 checkpoint: adapters, projections and temperature, strictly checked.

The NextGen-UIA reference copied whatever adapter tensors matched by name and silently skipped the rest, so a
stage-2 model with another Mona variant started from a partly random adapter. Here every encoder weight the model
trains must be in the checkpoint with the same shape, and the checkpoint may hold no encoder weight the model lacks;
otherwise :class:`InitFromError` names the keys and shapes on both sides. Heads are never loaded (stage 1 has none
that fits a stage-2 task).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from usvl.utils.errors import UserError

log = logging.getLogger(__name__)

ENCODER_PREFIX = "encoder."
"""Weights under this prefix (adapters inside the image tower, the projections) transfer."""

TEMPERATURE_KEYS = ("logit_scale",)
"""Task-level temperatures that transfer when both sides have them."""

LISTED = 8
"""Keys listed per problem in an error message."""


class InitFromError(UserError, ValueError):
    """A stage-1 checkpoint does not fit the model it should initialise; the message names both sides."""


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: the file itself, or the newest ``*.ckpt`` below a run folder.

    In a folder, the resume checkpoints ``last.ckpt`` (``ModelCheckpoint(save_last=True)``, the state of the last
    epoch) are passed over for the selected ones (best validation score); a folder holding only ``last*.ckpt``
    gives its newest.

    Args:
        path: A ``.ckpt`` file, or a folder such as ``runs/pretrain_thyroid`` (searched recursively).

    Raises:
        FileNotFoundError: The path does not exist, or a folder holds no ``*.ckpt`` file.
    """
    resolved = Path(path).expanduser()
    if resolved.is_file():
        return resolved
    if resolved.is_dir():
        found = sorted(resolved.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        found = [p for p in found if not is_last_checkpoint(p)] or found
        if not found:
            raise FileNotFoundError(f"init_from folder {resolved} holds no *.ckpt file: run stage 1 first "
                                    "(usvl fit --config configs/pretrain_<organ>.yaml) or name the checkpoint file")
        log.info("init_from %s: using its newest checkpoint %s", resolved, found[-1])
        return found[-1]
    raise FileNotFoundError(f"init_from checkpoint {resolved} does not exist: run stage 1 first (usvl fit --config "
                            "configs/pretrain_<organ>.yaml) or pass the path of its checkpoint")


def is_last_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a resume checkpoint Lightning writes with ``save_last`` (``last.ckpt``, ``last-v1.ckpt``)."""
    return re.fullmatch(r"last(-v\d+)?", path.stem) is not None


def transferable_keys(trainable: set[str], state: Mapping[str, torch.Tensor]) -> set[str]:
    """Keys of a model that stage 1 initialises: trainable encoder weights, and temperatures the model has."""
    keys = {key for key in trainable if key.startswith(ENCODER_PREFIX)}
    return keys | {key for key in TEMPERATURE_KEYS if key in state}


def select_weights(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], target_keys: set[str],
                   source_label: str = "checkpoint", target_label: str = "model") -> dict[str, torch.Tensor]:
    """The source tensors to load, after strict name and shape checks.

    Every key of ``target_keys`` under ``encoder.`` (the encoder weights the model trains) must be in ``source``,
    and every ``encoder.`` key of ``source`` must exist in the model (``target``), all with equal shapes. The source's
    encoder weights load, including those the model keeps frozen (e.g. the image projection of a segmentation
    model, whose head reads the maps); temperatures (:data:`TEMPERATURE_KEYS`) load when both sides have them.
    Other source keys (a head) are ignored.

    Args:
        source: The stage-1 state dict (trainable weights only, as usvl checkpoints hold).
        target: The model's full state dict (names and shapes).
        target_keys: The model keys stage 1 must provide, plus its temperatures (see :func:`transferable_keys`).
        source_label: How the message names the checkpoint (e.g. with its path and adapter).
        target_label: How the message names the model (e.g. with its adapter).

    Returns:
        ``{key: tensor}`` to load into the model.

    Raises:
        InitFromError: Keys are missing on either side or shapes differ; the message lists them (up to
            :data:`LISTED` per kind) with both sides' shapes and counts.
    """
    source_encoder = {key for key in source if key.startswith(ENCODER_PREFIX)}
    required = {key for key in target_keys if key.startswith(ENCODER_PREFIX)}
    missing = sorted(required - source_encoder)
    unexpected = sorted(source_encoder - set(target))
    temperatures = {key for key in TEMPERATURE_KEYS if key in source and key in target_keys}
    shared = sorted((source_encoder & set(target)) | temperatures)
    mismatched = [key for key in shared if tuple(source[key].shape) != tuple(target[key].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights the model trains are not in the checkpoint: "
                        + _listed(missing, target))
    if unexpected:
        problems.append(f"{len(unexpected)} encoder weights of the checkpoint do not exist in the model: "
                        + _listed(unexpected, source))
    if mismatched:
        shown = ", ".join(f"{key} {tuple(source[key].shape)} in the checkpoint vs {tuple(target[key].shape)} in the "
                          "model" for key in mismatched[:LISTED])
        more = f" and {len(mismatched) - LISTED} more" if len(mismatched) > LISTED else ""
        problems.append(f"{len(mismatched)} shapes differ: {shown}{more}")
    if problems:
        raise InitFromError(
            f"Cannot initialise the {target_label} from the {source_label} (strict name and shape check): "
            + "; ".join(problems) + ". Use the same encoder and adapter (type, variant, bottleneck, points) in both "
            "stages, or train stage 1 again with this model's adapter."
        )
    return {key: source[key] for key in shared}


def _listed(keys: list[str], shapes: Mapping[str, torch.Tensor]) -> str:
    shown = ", ".join(f"{key} {tuple(shapes[key].shape)}" for key in keys[:LISTED])
    return shown + (f" and {len(keys) - LISTED} more" if len(keys) > LISTED else "")
