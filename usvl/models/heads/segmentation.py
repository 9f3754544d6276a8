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


def _conv_block(in_channels: int, out_channels: int, groups: int, kernel_size: int = 3) -> nn.Sequential:
    """Conv (3x3 by default), group norm, GELU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2, bias=False),
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


class PixelTextSimilarity(nn.Module):
    """Scaled cosine-similarity maps between pixel features and text prompts in the joint image-text space.

    A linear map ``W`` (a 1x1 convolution without bias) projects each pixel's features ``x`` into the shared space
    (CLIPSeg/VLSM style); the map of a prompt ``t`` is ``scale * cos(W x, t)``, with a learnable scale. It is
    computed without materialising ``W x`` (``embed_dim`` channels at every pixel): the numerator is
    ``x . (W^T t / |t|)`` and ``|W x|^2 = x^T (W^T W) x``, so the cost is that of a ``channels x channels`` 1x1
    convolution however wide the shared space is.

    Args:
        channels: Channels of the feature map.
        embed_dim: Width of the shared image-text space.
        init_scale: Initial scale of the cosine similarities (clamped to at most 100, as CLIP's logit scale).
    """

    def __init__(self, channels: int, embed_dim: int, init_scale: float = 10.0) -> None:
        super().__init__()
        self.project = nn.Conv2d(channels, embed_dim, kernel_size=1, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    def forward(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Maps ``[B, P, h, w]`` from features ``[B, C, h, w]`` and prompts ``[P, D]`` (shared) or ``[B, P, D]``."""
        weight = self.project.weight.flatten(1).to(x.dtype)  # [D, C]
        prompts = F.normalize(prompts.to(x.dtype), dim=-1)
        pulled = prompts @ weight  # the prompts pulled back to pixel-feature space: [P, C] or [B, P, C]
        equation = "bchw,pc->bphw" if pulled.ndim == 2 else "bchw,bpc->bphw"
        numerator = torch.einsum(equation, x, pulled)
        gram = (weight.t() @ weight)[:, :, None, None]  # W^T W as a 1x1 convolution
        squared_norm = (x * F.conv2d(x, gram)).sum(dim=1, keepdim=True)
        cosine = numerator / squared_norm.clamp_min(1e-12).sqrt()
        return self.log_scale.exp().clamp(max=100.0) * cosine


TEXT_CONDITIONINGS = ("none", "film", "similarity")
"""How :class:`MultiScaleSegmentationHead` uses the text: not at all, FiLM, or pixel-text similarity maps."""


class MultiScaleSegmentationHead(nn.Module):
    """FPN-style decoder over the encoder's tapped maps, giving binary lesion logits at the input resolution.

    Each tapped map (shallow to deep) is projected by a 1x1 conv and group norm to ``decoder_dim`` channels. The
    deepest projection is fused top-down: upsampled to the next shallower map, added to its projection and smoothed
    by a 3x3 conv, down to the shallowest map. The text (e.g. the mean of the lesion-class prototypes, or one prompt
    per class) enters in one of two ways (or not at all, ``none``):

    - ``text_conditioning="film"``: the fused map is modulated per channel by the text embedding; the FiLM layer
      is zero-initialised, so the head starts text-agnostic. With one text vector per model this is a learned
      per-channel scale and shift, the same for every image.
    - ``text_conditioning="similarity"`` (CLIPSeg/VLSM style): at every level of the top-down path the pixel
      features are projected into the joint space (:class:`PixelTextSimilarity`) and compared with each prompt by
      cosine similarity, one map per prompt and level. The maps, resized to the fused resolution, are concatenated
      to the fused map and mixed back into it by a 1x1 conv block (residual), and concatenated again, resized, to
      the last feature map before the logit conv, so the text reaches every pixel through the image content.

    ``upsample_steps`` x2 steps (3x3 conv halving the channels, then bilinear x2 upsampling) bring the fused map back
    towards the input size, a 1x1 conv gives one lesion logit per pixel, and a final bilinear resize matches
    ``output_size`` exactly.

    For the embedded encoder (maps at strides 4-32 with 24/40/112/320 channels) and ``decoder_dim=64`` the head has
    about 200k parameters with FiLM and 236k with similarity maps (``embed_dim=256``, one prompt).

    Unlike the reference decoders (a 1x1 conv after one bilinear x16 upsampling, or a pretrained CLIPSeg decoder of
    1.1M parameters), it keeps the shallow, high-resolution maps in the fusion, so lesion boundaries come from stride
    4 features rather than from 14x14 tokens.

    Args:
        feature_dims: Channels of the tapped maps, shallow to deep (the encoder's ``feature_dims``).
        embed_dim: Width of the shared image-text space (the text embedding given to ``forward``).
        num_outputs: Logit channels per pixel (1 for binary lesion segmentation).
        decoder_dim: Channels of the fused feature pyramid.
        text_conditioning: ``film`` modulates the fused map with the text embedding; ``similarity`` adds
            pixel-text similarity maps; ``none`` ignores text.
        upsample_steps: Number of x2 upsampling stages after the fusion; ``log2`` of the stride of the shallowest
            tapped map (2 for stride 4). Any remaining size mismatch is closed by bilinear resizing.
        norm_groups: Groups of the group norms (reduced to a divisor of the channel count when needed).
        dropout: Dropout on the last feature map before the logit conv.
        init_prior: Initial foreground probability; sets the bias of the logit conv to ``logit(init_prior)`` so
            training does not start by predicting half the image as lesion.
        num_prompts: Text prompts compared with the pixels (``similarity``): ``forward`` then takes ``[num_prompts,
            embed_dim]`` (or ``[embed_dim]`` for one).
        similarity_scale: Initial scale of the cosine similarities (``similarity``).
    """

    def __init__(
        self,
        feature_dims: Sequence[int],
        embed_dim: int,
        num_outputs: int = 1,
        decoder_dim: int = 64,
        text_conditioning: Literal["none", "film", "similarity"] = "film",
        upsample_steps: int = 2,
        norm_groups: int = 8,
        dropout: float = 0.0,
        init_prior: float = 0.1,
        num_prompts: int = 1,
        similarity_scale: float = 10.0,
    ) -> None:
        super().__init__()
        if not feature_dims:
            raise ValueError("MultiScaleSegmentationHead needs at least one tapped feature map")
        if text_conditioning not in TEXT_CONDITIONINGS:
            raise ValueError(f"text_conditioning must be one of {list(TEXT_CONDITIONINGS)}, got {text_conditioning!r}")
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be at least 1, got {num_prompts}")
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
        self.text_conditioning = text_conditioning
        self.num_prompts = num_prompts
        self.film = FiLM(embed_dim, decoder_dim) if text_conditioning == "film" else None
        self.similarity: nn.ModuleList | None = None
        self.text_mix: nn.Module | None = None
        similarity_maps = 0
        if text_conditioning == "similarity":
            self.similarity = nn.ModuleList(PixelTextSimilarity(decoder_dim, embed_dim, similarity_scale)
                                            for _ in self.feature_dims)
            similarity_maps = num_prompts * len(self.feature_dims)
            self.text_mix = _conv_block(decoder_dim + similarity_maps, decoder_dim, norm_groups, kernel_size=1)
        channels = decoder_dim
        upsample = []
        for _ in range(upsample_steps):
            out_channels = max(channels // 2, 8)
            upsample.append(_conv_block(channels, out_channels, norm_groups))
            channels = out_channels
        self.upsample = nn.ModuleList(upsample)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels + similarity_maps, num_outputs, kernel_size=1)
        nn.init.constant_(self.classifier.bias, math.log(init_prior / (1.0 - init_prior)))

    @property
    def uses_text(self) -> bool:
        """Whether ``forward`` needs a text embedding."""
        return self.text_conditioning != "none"

    def _prompts(self, text: torch.Tensor | None) -> torch.Tensor:
        """The prompts ``[P, D]`` or ``[B, P, D]`` of the similarity maps, checked against ``num_prompts``."""
        if text is None:
            raise ValueError("text_conditioning='similarity' needs a text embedding; got None")
        prompts = text.unsqueeze(0) if text.ndim == 1 else text
        if prompts.shape[-2] != self.num_prompts:
            raise ValueError(f"Expected {self.num_prompts} text prompts ([{self.num_prompts}, D]), got text of shape "
                             f"{tuple(text.shape)}; set the head's num_prompts to the number of prompts given")
        return prompts

    def fuse_with_text(self, features: ImageFeatures, text: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fused, text-conditioned map and the similarity maps.

        Returns:
            The fused map ``[B, decoder_dim, h, w]`` at the shallowest tap's resolution, and the similarity maps
            ``[B, num_prompts x levels, h, w]`` at that resolution (``None`` unless ``similarity``).

        Raises:
            ValueError: The number or channels of the maps do not match ``feature_dims``, or a text-conditioned
                head gets no text (or the wrong number of prompts).
        """
        maps = features.maps
        if len(maps) != len(self.feature_dims) or any(m.shape[1] != c for m, c in zip(maps, self.feature_dims,
                                                                                          strict=True)):
            raise ValueError(
                f"Expected maps with channels {self.feature_dims}, got {[tuple(m.shape[1:]) for m in maps]}"
            )
        prompts = self._prompts(text) if self.similarity is not None else None
        fused = self.lateral[-1](maps[-1])
        levels = [fused]
        for index in range(len(maps) - 2, -1, -1):
            lateral = self.lateral[index](maps[index])
            fused = F.interpolate(fused, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            fused = self.smooth[index](fused + lateral)
            levels.append(fused)
        if self.film is not None:
            if text is None:
                raise ValueError("text_conditioning='film' needs a text embedding; got None")
            fused = self.film(fused, text)
        similarity = None
        if self.similarity is not None:
            size = fused.shape[-2:]
            similarity = torch.cat([
                F.interpolate(layer(level, prompts), size=size, mode="bilinear", align_corners=False)
                for layer, level in zip(self.similarity, levels[::-1], strict=True)
            ], dim=1)
            fused = fused + self.text_mix(torch.cat([fused, similarity], dim=1))
        return fused, similarity

    def fuse(self, features: ImageFeatures, text: torch.Tensor | None = None) -> torch.Tensor:
        """The fused (and text-conditioned) map at the resolution of the shallowest tap, ``[B, decoder_dim, h, w]``.

        Raises:
            ValueError: See :meth:`fuse_with_text`.
        """
        return self.fuse_with_text(features, text)[0]

    def forward(
        self,
        features: ImageFeatures,
        text: torch.Tensor | None = None,
        output_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Lesion logits ``[B, num_outputs, H, W]``.

        Args:
            features: Image features with ``maps`` shallow to deep.
            text: With ``film``: a text embedding ``[embed_dim]`` (shared by the batch) or ``[B, embed_dim]``.
                With ``similarity``: prompts ``[num_prompts, embed_dim]`` (shared; ``[embed_dim]`` for one) or
                ``[B, num_prompts, embed_dim]``. Ignored with ``none``.
            output_size: ``(H, W)`` of the logits, normally the input image size. ``None`` keeps the size reached
                by the upsampling stages.

        Returns:
            One logit per pixel (sigmoid gives the lesion probability).
        """
        x, similarity = self.fuse_with_text(features, text)
        for block in self.upsample:
            # Convolve before upsampling: the same receptive field at a quarter of the cost of the reverse order.
            x = F.interpolate(block(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.dropout(x)
        if similarity is not None:
            similarity = F.interpolate(similarity, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, similarity], dim=1)
        logits = self.classifier(x)
        if output_size is not None and tuple(logits.shape[-2:]) != tuple(output_size):
            logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
        return logits
