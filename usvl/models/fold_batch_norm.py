"""Fold eval-mode batch norms into the convolutions that feed them: one pass over the activations less per layer.

A batch norm in eval mode is a fixed per-channel affine map, so ``bn(conv(x))`` equals a convolution with weights
``W * s`` and bias ``(b - mean) * s + beta`` where ``s = gamma / sqrt(var + eps)``. Frozen CNN towers (the embedded
EfficientNet-Lite0: 49 such pairs) spend a fifth of their step time in those normalisation passes on a CPU;
folded, a training step at batch 32 took 0.74 s instead of 0.92 s (``BENCHMARKS.md``, "CPU fast paths"), outputs
equal to float rounding.

The folding changes no module, parameter or buffer: :func:`fold_batch_norms` gives each verified pair a forward that
computes the folded weights from the current parameters on every call (a few MB of arithmetic, against hundreds of
MB of activations), so checkpoints, ``load_state_dict``, devices, adapters and the ONNX export see the model as
built. A pair is folded only where a forward pass showed the batch norm's input to be exactly the convolution's
output, and only while the batch norm is in eval mode: a batch norm that trains (or adapts its statistics) takes
its own path, unfolded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def _folded_weights(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of the convolution that computes ``bn(conv(x))`` with ``bn`` in eval mode."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype), shift.to(conv.weight.dtype)


def _convolution(conv: nn.Conv2d) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """How ``conv`` convolves with given weights: plain ``nn.Conv2d`` and timm's ``Conv2dSame``; ``None`` otherwise."""
    if type(conv).forward is nn.Conv2d.forward:
        return conv._conv_forward
    try:
        from timm.layers import Conv2dSame, conv2d_same
    except ImportError:
        return None
    if type(conv).forward is Conv2dSame.forward:
        return lambda x, weight, bias: conv2d_same(x, weight, bias, conv.stride, conv.padding, conv.dilation,
                                                   conv.groups)
    return None


def _after_normalisation(bn: nn.BatchNorm2d) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What ``bn`` does after normalising (timm's ``BatchNormAct2d``: dropout and activation); ``None`` if unknown."""
    if type(bn).forward is nn.BatchNorm2d.forward:
        return lambda x: x
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:
        return None
    if type(bn).forward is BatchNormAct2d.forward:
        return lambda x: bn.act(bn.drop(x))
    return None


class FoldedConvForward:
    """The forward of a convolution whose eval-mode batch norm is folded into it (see the module docstring)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        self.conv, self.bn = conv, bn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn.training:
            return type(self.conv).forward(self.conv, x)
        weight, bias = _folded_weights(self.conv, self.bn)
        return _convolution(self.conv)(x, weight, bias)


class FoldedBatchNormForward:
    """The forward of a batch norm folded into the convolution before it: only what follows the normalisation."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        self.bn = bn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn.training:
            return type(self.bn).forward(self.bn, x)
        return _after_normalisation(self.bn)(x)


def conv_batch_norm_pairs(module: nn.Module, run: Callable[[], Any]) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The foldable (convolution, batch norm) pairs of ``module``, seen during one forward pass.

    A pair is one where the batch norm's input is the very tensor the convolution returned, unchanged since (its
    version counter catches in-place updates), while ``run()`` does a forward pass (without gradients, every module
    in eval mode, modes restored afterwards); only convolutions and batch norms this module knows how to fold, and
    only convolutions that feed one batch norm.
    """
    outputs: list[tuple[torch.Tensor, int, nn.Conv2d]] = []  # each output kept alive, so no id is reused
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
    handles = []

    def after_conv(conv: nn.Module, _: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            outputs.append((output, output._version, conv))

    def before_bn(bn: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        # The very tensor the convolution returned, not changed in place since (e.g. by a LoRA update added to it).
        feeding = [conv for output, version, conv in outputs if output is args[0] and output._version == version]
        if len(feeding) == 1 and all(bn is not other for _, other in pairs):
            pairs.append((feeding[0], bn))

    for sub in module.modules():
        if isinstance(sub, nn.Conv2d) and _convolution(sub) is not None:
            handles.append(sub.register_forward_hook(after_conv))
        elif isinstance(sub, nn.BatchNorm2d) and _after_normalisation(sub) is not None:
            handles.append(sub.register_forward_pre_hook(before_bn))
    modes = {sub: sub.training for sub in module.modules()}
    module.eval()  # no batch-norm statistics updated, no dropout drawn from the random stream
    try:
        with torch.inference_mode(False), torch.no_grad():  # version counters exist outside inference mode only
            run()
    finally:
        for handle in handles:
            handle.remove()
        for sub, training in modes.items():
            sub.training = training
    used: dict[int, int] = {}
    for conv, _ in pairs:
        used[id(conv)] = used.get(id(conv), 0) + 1
    return [(conv, bn) for conv, bn in pairs if used[id(conv)] == 1]


def fold_batch_norms(module: nn.Module, run: Callable[[], Any]) -> int:
    """Fold every eval-mode batch norm of ``module`` into the convolution that feeds it.

    Args:
        module: A network, e.g. an encoder with a frozen CNN image tower.
        run: Does one forward pass through ``module`` (e.g. of two images), to find the pairs.

    Returns:
        The number of pairs folded.
    """
    pairs = [(conv, bn) for conv, bn in conv_batch_norm_pairs(module, run)
             if not isinstance(conv.__dict__.get("forward"), FoldedConvForward)]
    for conv, bn in pairs:
        conv.forward = FoldedConvForward(conv, bn)
        bn.forward = FoldedBatchNormForward(bn)
    log.debug("Folded %d batch norms into their convolutions", len(pairs))
    return len(pairs)


def unfold_batch_norms(module: nn.Module) -> int:
    """Undo :func:`fold_batch_norms` on ``module``; returns the number of pairs restored.

    Encoders inside ``module`` look for pairs again on their next forward pass. Call it after changing the modules
    (an adapter wrapping a convolution, a merge), so the folding never outlives the structure it was checked on.
    """
    count = 0
    for sub in module.modules():
        if getattr(sub, "_batch_norms_checked", False):
            sub._batch_norms_checked = False
        for folded in (FoldedConvForward, FoldedBatchNormForward):
            if isinstance(sub.__dict__.get("forward"), folded):
                del sub.forward
                count += folded is FoldedConvForward
    return count


__all__ = ["conv_batch_norm_pairs", "fold_batch_norms", "unfold_batch_norms"]
