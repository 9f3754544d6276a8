"""Mona adapters (multi-cognitive visual adapters) for feature maps.

Mona (Yin et al., CVPR 2025), as used by NextGen-UIA: a scaled LayerNorm, a down projection to a bottleneck,
multi-scale depthwise convolutions (3/5/7) with a 1x1 mixer, GELU, dropout, an up projection and an outer
residual. Here it works on ``[B, C, H, W]`` maps, so it fits after the stages of a CNN image tower.

Differences from the reference code, on purpose: the up projection can start at zero (``zero_init``) so the
adapted encoder equals the pretrained one at step 0, and the bottleneck is capped at the channel count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from usvl.models.adapters.base import Adapter, select_points, wrap_module
from usvl.models.encoders.base import VisionLanguageEncoder


class MultiScaleDepthwiseOp(nn.Module):
    """Mona's baseline op: ``y = mean(dw3, dw5, dw7)(x) + x; out = y + P(y)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels) for k in (3, 5, 7)
        )
        self.mixer = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-scale depthwise filtering with two residuals."""
        y = sum(conv(x) for conv in self.convs) / len(self.convs) + x
        return y + self.mixer(y)


class MonaLayer(nn.Module):
    """One Mona block on a ``[B, C, H, W]`` feature map.

    Args:
        channels: Channels of the adapted feature map.
        bottleneck: Bottleneck width (capped at ``channels``).
        dropout: Dropout after GELU.
        zero_init: Start the up projection at zero, so the layer is an identity at initialisation.
    """

    usvl_adapter = True

    def __init__(self, channels: int, bottleneck: int = 64, dropout: float = 0.1, zero_init: bool = True) -> None:
        super().__init__()
        width = min(bottleneck, channels)
        self.norm = nn.LayerNorm(channels)
        self.gamma = nn.Parameter(torch.full((channels,), 1e-6))
        self.gamma_x = nn.Parameter(torch.ones(channels))
        self.down = nn.Conv2d(channels, width, 1)
        self.op = MultiScaleDepthwiseOp(width)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Conv2d(width, channels, 1)
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + up(dropout(gelu(op(down(LN(x)·γ + x·γx)))))``."""
        normed = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        scale = self.gamma.view(1, -1, 1, 1)
        scale_x = self.gamma_x.view(1, -1, 1, 1)
        u = normed * scale + x * scale_x
        h = self.op(self.down(u))
        return x + self.up(self.dropout(F.gelu(h)))


class MonaAdapter(Adapter):
    """Insert a Mona layer after each chosen adapter point of the image tower.

    Args:
        variant: Mona variant. ``baseline`` is the multi-scale depthwise op.
        bottleneck: Bottleneck width (the reference uses 64).
        dropout: Dropout inside each layer.
        points: Indices into the encoder's ``adapter_points``; ``None`` adapts all of them.
        zero_init: Start each layer as an identity.
    """

    name = "mona"

    def __init__(
        self,
        variant: Literal["baseline"] = "baseline",
        bottleneck: int = 64,
        dropout: float = 0.1,
        points: Sequence[int] | None = None,
        zero_init: bool = True,
    ) -> None:
        if variant != "baseline":
            raise ValueError(f"Unknown Mona variant '{variant}'; available: baseline")
        self.variant = variant
        self.bottleneck = bottleneck
        self.dropout = dropout
        self.points = None if points is None else list(points)
        self.zero_init = zero_init

    def apply(self, encoder: VisionLanguageEncoder) -> list[nn.Module]:
        """Wrap each chosen point of ``encoder`` with a :class:`MonaLayer`."""
        layers = []
        for qualified_name, channels in select_points(encoder, self.points):
            layer = MonaLayer(channels, self.bottleneck, self.dropout, self.zero_init)
            wrap_module(encoder, qualified_name, layer)
            layers.append(layer)
        return layers
