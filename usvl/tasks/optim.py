"""The optimizer's fast path: torch's fused Adam/AdamW step on CUDA, when the config leaves the choice to torch."""

from __future__ import annotations

import inspect
import logging

import torch

log = logging.getLogger(__name__)

FUSED_DEVICE_TYPES = ("cuda",)
"""Devices whose Adam/AdamW step usvl switches to torch's fused kernel (one kernel for every parameter).

CPUs keep torch's default step: torch has fused CPU kernels too, but they would change the last bits of every CPU
run's results, and on a CPU the optimizer step is a small part of a training step."""

FUSABLE = (torch.optim.Adam, torch.optim.AdamW)


def prefer_fused(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``optimizer`` rebuilt with ``fused=True`` where torch's fused step applies, else ``optimizer`` itself.

    It applies when the optimizer is exactly Adam or AdamW, has no state yet, its config set neither ``fused`` nor
    ``foreach`` (an explicit choice is kept) nor ``differentiable``, and every parameter is a floating-point tensor on
    one of :data:`FUSED_DEVICE_TYPES`. Hyperparameters and parameter groups are kept as they are.
    """
    defaults = optimizer.defaults
    if type(optimizer) not in FUSABLE or optimizer.state or defaults.get("differentiable"):
        return optimizer
    if defaults.get("fused") is not None or defaults.get("foreach") is not None:
        return optimizer
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    if not parameters or not all(p.device.type in FUSED_DEVICE_TYPES and p.is_floating_point() for p in parameters):
        return optimizer
    accepted = inspect.signature(type(optimizer)).parameters
    settings = {name: value for name, value in defaults.items() if name in accepted}
    groups = [{**group, "fused": True, "foreach": None} for group in optimizer.param_groups]
    fused = type(optimizer)(groups, **{**settings, "fused": True, "foreach": None})
    log.info("%s: torch's fused step (%d parameter tensors on %s)", type(optimizer).__name__, len(parameters),
             parameters[0].device)
    return fused
