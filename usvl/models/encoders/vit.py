"""Helpers for ViT image towers: patch size, patch grid, prefix tokens, and tokens as feature maps.

They accept timm ``VisionTransformer`` towers, open_clip ``VisionTransformer`` towers, open_clip ``TimmModel``
towers (their timm ``trunk``) and OpenAI-CLIP-like towers (``conv1`` patch convolution).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


def _vit_core(tower: nn.Module) -> nn.Module:
    """The module that holds the patch embedding: the tower itself, or open_clip's timm ``trunk``."""
    trunk = getattr(tower, "trunk", None)
    return trunk if isinstance(trunk, nn.Module) else tower


def _check_divisible(height: int, width: int, patch: tuple[int, int]) -> None:
    if height % patch[0] or width % patch[1]:
        raise ValueError(f"Input size {height}x{width} is not divisible by the patch size {patch[0]}x{patch[1]}")


def vit_patch_size(tower: nn.Module) -> tuple[int, int]:
    """Patch size ``(ph, pw)`` of a ViT image tower.

    Supports timm ``VisionTransformer`` (``patch_embed.patch_size``), open_clip ``VisionTransformer``
    (``patch_size``), open_clip ``TimmModel`` (its ``trunk``) and OpenAI-CLIP-like towers (``conv1.kernel_size``).

    Raises:
        TypeError: The tower has none of these attributes.
    """
    core = _vit_core(tower)
    patch_embed = getattr(core, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "patch_size", None) is not None:
        return _pair(patch_embed.patch_size)
    if getattr(core, "patch_size", None) is not None:
        return _pair(core.patch_size)
    conv = getattr(core, "conv1", None)
    if isinstance(conv, nn.Conv2d):
        return _pair(conv.kernel_size)
    raise TypeError(f"Cannot find the patch size of {type(tower).__name__}: not a timm/open_clip ViT")


def vit_grid_size(tower: nn.Module, image_size: int | Sequence[int] | None = None) -> tuple[int, int]:
    """Patch grid ``(h, w)`` of a ViT image tower, for its native input size or for ``image_size``.

    Use it to give token adapters (e.g. ``MonaAdapter(grid_size=...)``) the grid of non-square inputs; square
    grids are inferred from the token count anyway.

    Args:
        tower: timm ``VisionTransformer``, open_clip ``VisionTransformer`` or ``TimmModel``, or an OpenAI-CLIP-like
            tower (``conv1`` patch conv and ``input_resolution``).
        image_size: Input ``H`` or ``(H, W)``; ``None`` gives the grid at the tower's configured input size.

    Raises:
        TypeError: The tower is not a recognised ViT.
        ValueError: ``image_size`` is not divisible by the patch size (and the tower does not pad dynamically).
    """
    core = _vit_core(tower)
    patch_embed = getattr(core, "patch_embed", None)
    if image_size is None:
        for owner in (patch_embed, core):
            grid = getattr(owner, "grid_size", None) if owner is not None else None
            if grid is not None:
                return _pair(grid)
        resolution = getattr(core, "input_resolution", None) or getattr(core, "image_size", None)
        if resolution is None:
            raise TypeError(f"Cannot find the input size of {type(tower).__name__}; pass image_size")
        image_size = resolution
    height, width = _pair(image_size)
    if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
        if not getattr(patch_embed, "dynamic_img_pad", False):
            _check_divisible(height, width, vit_patch_size(tower))
        return tuple(int(v) for v in patch_embed.dynamic_feat_size((height, width)))
    patch_h, patch_w = vit_patch_size(tower)
    _check_divisible(height, width, (patch_h, patch_w))
    return height // patch_h, width // patch_w


def vit_num_prefix_tokens(tower: nn.Module) -> int:
    """Leading non-patch tokens (CLS, registers) in the token sequence of a ViT image tower.

    timm towers report ``num_prefix_tokens``; open_clip ``VisionTransformer`` has one CLS token
    (``class_embedding``); anything else with ``class_embedding`` or ``cls_token`` is taken to have one.

    Raises:
        TypeError: The tower has no recognisable prefix tokens attribute.
    """
    core = _vit_core(tower)
    if hasattr(core, "num_prefix_tokens"):
        return int(core.num_prefix_tokens)
    if getattr(core, "class_embedding", None) is not None or getattr(core, "cls_token", None) is not None:
        return 1
    raise TypeError(f"Cannot find the prefix tokens of {type(tower).__name__}: not a timm/open_clip ViT")


def tokens_to_map(output: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """ViT tokens ``[B, N, D]`` (prefix tokens first) as a square map ``[B, D, h, w]``; maps ``[B, C, h, w]`` pass.

    Raises:
        ValueError: The patch tokens do not form a square grid.
    """
    if output.ndim == 4:
        return output
    patches = output[:, num_prefix_tokens:]
    tokens = int(patches.shape[1])  # an int also while tracing for ONNX export (where sizes are tensors)
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise ValueError(f"Cannot reshape {tokens} patch tokens into a square grid")
    return patches.transpose(1, 2).reshape(output.shape[0], -1, side, side)
