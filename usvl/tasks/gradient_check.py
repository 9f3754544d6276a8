"""Fit-start check that every trainable parameter of a task can receive a gradient."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def parameters_without_gradient(module: nn.Module, output: Callable[[], torch.Tensor]) -> list[str]:
    """Names of the trainable parameters of ``module`` that ``output()`` does not depend on.

    ``output`` runs a forward pass; the gradient of the sum of its result is taken with
    ``torch.autograd.grad(..., allow_unused=True)``, so no ``.grad`` is left on any parameter. A parameter whose
    gradient is ``None`` is not in the autograd graph at all (a zero gradient, e.g. of a zero-initialised layer,
    still counts as reachable). Buffers (e.g. batch-norm running statistics) are restored afterwards.
    """
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if not named:
        return []
    buffers = {name: buffer.detach().clone() for name, buffer in module.named_buffers()}
    try:
        with torch.enable_grad():
            result = output()
            gradients = torch.autograd.grad(result.float().sum(), [p for _, p in named], allow_unused=True)
    finally:
        with torch.no_grad():
            for name, buffer in module.named_buffers():
                buffer.copy_(buffers[name])
    return [name for (name, _), gradient in zip(named, gradients, strict=True) if gradient is None]


def group_by_module(module: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """Group parameter names by the outermost module all of whose trainable parameters are in ``names``."""
    unused = set(names)
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        owner = name
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth]) + "."
            if all(other in unused for other in trainable if other.startswith(prefix)):
                owner = prefix[:-1]
                break
        groups.setdefault(owner, []).append(name)
    return groups


def unused_parameters_message(module: nn.Module, names: list[str]) -> str:
    """The error for trainable parameters that never receive a gradient: which, how many, and what to do."""
    sizes = dict(module.named_parameters())
    groups = group_by_module(module, names)
    listed = "; ".join(f"{owner} ({len(members)} tensors, {sum(sizes[n].numel() for n in members):,} values)"
                       for owner, members in groups.items())
    count = sum(sizes[name].numel() for name in names)
    return (
        f"{len(names)} trainable parameter tensors ({count:,} values) never receive a gradient, so they would not "
        f"train (and DDP stops on them). They are in: {listed}; the first is {names[0]}. They do not reach the "
        "model's output: usually adapters placed after the last tapped block of the image tower (e.g. adapters "
        "after ViT blocks 10-11 with feature_taps ending at 9), or a projection the head does not read. Move the "
        "adapter points (model.init_args.adapter.init_args.points) to blocks at or before the last tap, or tap "
        "later blocks (the encoder's feature_taps)."
    )
