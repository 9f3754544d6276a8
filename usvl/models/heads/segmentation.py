"""Segmentation heads over multi-scale image features, optionally conditioned on a text embedding."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from usvl.models.encoders.base import ImageFeatures


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """Group norm (independent of the batch size, so small CPU batches train the same as large ones)."""
    groups = math.gcd(channels, groups)
    return nn.GroupNorm(groups, channels)


def _conv_block(in_channels: int, out_channels: int, groups: int) -> nn.Sequential:
    """3x3 conv, group norm, GELU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        _norm(out_channels, groups),
        nn.GELU(),
    )


class FiLM(nn.Module):
    """Feature-wise linear modulation ``x * (1 + gamma(t)) + beta(t)`` from a text embedding ``t``.

    The linear map is zero-initialised, so the layer starts as the identity and the text enters gradually.

    Args:
        embed_dim: Width of the text embedding.
        channels: Channels of the modulated feature map.
    """

    def __init__(self, embed_dim: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embed_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Modulate ``x`` ``[B, C, H, W]`` with ``text`` ``[D]`` (shared by the batch) or ``[B, D]``."""
        if text.ndim == 1:
            text = text.unsqueeze(0)
        gamma, beta = self.linear(text.to(x.dtype)).chunk(2, dim=-1)
        return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class MultiScaleSegmentationHead(nn.Module):
    """FPN-style decoder over the encoder's tapped maps, giving binary lesion logits at the input resolution.

    Each tapped map (shallow to deep) is projected by a 1x1 conv and group norm to ``decoder_dim`` channels. The
    deepest projection is fused top-down: upsampled to the next shallower map, added to its projection and smoothed
    by a 3x3 conv, down to the shallowest map. With ``text_conditioning="film"`` the fused map is modulated per
    channel by a text embedding (e.g. the mean of the lesion-class prototypes, or a lesion description); the FiLM
    layer is zero-initialised, so the head starts text-agnostic. ``upsample_steps`` x2 steps (3x3 conv halving the
    channels, then bilinear x2 upsampling) bring the fused map back towards the input size, a 1x1 conv gives one lesion
    logit per pixel, and a final bilinear resize matches ``output_size`` exactly.

    For the embedded encoder (maps at strides 4-32 with 24/40/112/320 channels) and ``decoder_dim=64`` the head has
    about 200k parameters.

    Unlike the reference decoders (a 1x1 conv after one bilinear x16 upsampling, or a pretrained CLIPSeg decoder of
    1.1M parameters), it keeps the shallow, high-resolution maps in the fusion, so lesion boundaries come from stride
    4 features rather than from 14x14 tokens.

    Args:
        feature_dims: Channels of the tapped maps, shallow to deep (the encoder's ``feature_dims``).
        embed_dim: Width of the shared image-text space (the text embedding given to ``forward``).
        num_outputs: Logit channels per pixel (1 for binary lesion segmentation).
        decoder_dim: Channels of the fused feature pyramid.
        text_conditioning: ``film`` modulates the fused map with the text embedding; ``none`` ignores text.
        upsample_steps: Number of x2 upsampling stages after the fusion; ``log2`` of the stride of the shallowest
            tapped map (2 for stride 4). Any remaining size mismatch is closed by bilinear resizing.
        norm_groups: Groups of the group norms (reduced to a divisor of the channel count when needed).
        dropout: Dropout on the last feature map before the logit conv.
        init_prior: Initial foreground probability; sets the bias of the logit conv to ``logit(init_prior)`` so
            training does not start by predicting half the image as lesion.
    """

    def __init__(
        self,
        feature_dims: Sequence[int],
        embed_dim: int,
        num_outputs: int = 1,
        decoder_dim: int = 64,
        text_conditioning: Literal["none", "film"] = "film",
        upsample_steps: int = 2,
        norm_groups: int = 8,
        dropout: float = 0.0,
        init_prior: float = 0.1,
    ) -> None:
        super().__init__()
        if not feature_dims:
            raise ValueError("MultiScaleSegmentationHead needs at least one tapped feature map")
        if text_conditioning not in ("none", "film"):
            raise ValueError(f"text_conditioning must be 'none' or 'film', got {text_conditioning!r}")
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be at least 1, got {num_outputs}")
        if not 0.0 < init_prior < 1.0:
            raise ValueError(f"init_prior must lie in (0, 1), got {init_prior}")
        self.feature_dims = list(feature_dims)
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, decoder_dim, kernel_size=1, bias=False), _norm(decoder_dim, norm_groups))
            for c in self.feature_dims
        )
        self.smooth = nn.ModuleList(
            _conv_block(decoder_dim, decoder_dim, norm_groups) for _ in self.feature_dims[:-1]
        )
        self.film = FiLM(embed_dim, decoder_dim) if text_conditioning == "film" else None
        channels = decoder_dim
        upsample = []
        for _ in range(upsample_steps):
            out_channels = max(channels // 2, 8)
            upsample.append(_conv_block(channels, out_channels, norm_groups))
            channels = out_channels
        self.upsample = nn.ModuleList(upsample)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_outputs, kernel_size=1)
        nn.init.constant_(self.classifier.bias, math.log(init_prior / (1.0 - init_prior)))

    @property
    def uses_text(self) -> bool:
        """Whether ``forward`` needs a text embedding."""
        return self.film is not None

    def fuse(self, features: ImageFeatures, text: torch.Tensor | None = None) -> torch.Tensor:
        """The fused (and text-modulated) map at the resolution of the shallowest tap, ``[B, decoder_dim, h, w]``.

        Raises:
            ValueError: The number or channels of the maps do not match ``feature_dims``, or FiLM has no text.
        """
        maps = features.maps
        if len(maps) != len(self.feature_dims) or any(m.shape[1] != c for m, c in zip(maps, self.feature_dims,
                                                                                          strict=True)):
            raise ValueError(
                f"Expected maps with channels {self.feature_dims}, got {[tuple(m.shape[1:]) for m in maps]}"
            )
        fused = self.lateral[-1](maps[-1])
        for index in range(len(maps) - 2, -1, -1):
            lateral = self.lateral[index](maps[index])
            fused = F.interpolate(fused, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            fused = self.smooth[index](fused + lateral)
        if self.film is not None:
            if text is None:
                raise ValueError("text_conditioning='film' needs a text embedding; got None")
            fused = self.film(fused, text)
        return fused

    def forward(
        self,
        features: ImageFeatures,
        text: torch.Tensor | None = None,
        output_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Lesion logits ``[B, num_outputs, H, W]``.

        Args:
            features: Image features with ``maps`` shallow to deep.
            text: Text embedding ``[embed_dim]`` (shared by the batch) or ``[B, embed_dim]``; required with FiLM,
                ignored otherwise.
            output_size: ``(H, W)`` of the logits, normally the input image size. ``None`` keeps the size reached
                by the upsampling stages.

        Returns:
            One logit per pixel (sigmoid gives the lesion probability).
        """
        x = self.fuse(features, text)
        for block in self.upsample:
            # Convolve before upsampling: the same receptive field at a quarter of the cost of the reverse order.
            x = F.interpolate(block(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        logits = self.classifier(self.dropout(x))
        if output_size is not None and tuple(logits.shape[-2:]) != tuple(output_size):
            logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
        return logits
