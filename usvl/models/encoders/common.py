"""Small pieces shared by the encoder backends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def identity_linear(width: int) -> nn.Linear:
    """A trainable ``width -> width`` linear map that starts as the identity."""
    layer = nn.Linear(width, width)
    nn.init.eye_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def tokens_to_map(output: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """ViT tokens ``[B, N, D]`` (prefix tokens first) as a square map ``[B, D, h, w]``; maps pass through.

    Raises:
        ValueError: The patch tokens do not form a square grid.
    """
    if output.ndim == 4:
        return output
    patches = output[:, num_prefix_tokens:]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ValueError(f"Cannot reshape {patches.shape[1]} patch tokens into a square grid")
    return patches.transpose(1, 2).reshape(output.shape[0], -1, side, side)


@contextmanager
def capture_outputs(modules: list[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Record the output of each module (the first element of a tuple output) while the block runs.

    Yields:
        A list filled, in the order of ``modules``, once the forward pass inside the block has run.
    """
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int):
        return lambda _module, _inputs, output: captured.__setitem__(
            index, output[0] if isinstance(output, tuple) else output)

    handles = [module.register_forward_hook(hook(index)) for index, module in enumerate(modules)]
    outputs: list[torch.Tensor] = []
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()
    outputs.extend(captured[index] for index in range(len(modules)))
