"""Small pieces shared by the encoder backends."""

from __future__ import annotations

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
