"""The one interface every vision-language encoder implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

VIT_ATTENTION_LORA_TARGETS = r"image_tower\.(?:.+\.)?blocks\.\d+\.attn\.(?:qkv|proj)"
"""The fused ``attn.qkv`` and the ``attn.proj`` Linear layers of every block of a timm ViT image tower."""


@dataclass
class ImageFeatures:
    """What an image tower hands to heads.

    Attributes:
        global_embedding: Pooled image embedding projected into the shared image-text space, ``[B, D]``.
        maps: Multi-scale feature maps from the tapped layers, each ``[B, C_i, h_i, w_i]``, shallow to deep.
        pooled: Un-projected pooled features of the last tapped layer, ``[B, C_last]``.
    """

    global_embedding: torch.Tensor
    maps: list[torch.Tensor] = field(default_factory=list)
    pooled: torch.Tensor | None = None


class VisionLanguageEncoder(nn.Module, ABC):
    """A frozen image tower and text tower with trainable projections into one embedding space.

    Subclasses set ``embed_dim``, ``feature_dims``, ``image_mean``/``image_std`` and ``encoder_id`` and implement
    :meth:`encode_image`, :meth:`encode_text` and :attr:`adapter_points`.
    """

    encoder_id: str = "abstract"
    image_tower_path: str = "image_tower"
    """Qualified name of the image tower inside the encoder: the only place LoRA may adapt."""
    lora_targets: str | list[str] = VIT_ATTENTION_LORA_TARGETS
    """Layers LoRA adapts by default (regular expression on qualified names, or a list of names)."""
    embed_dim: int
    feature_dims: list[int]
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @abstractmethod
    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Encode a normalised image batch ``[B, 3, H, W]`` into :class:`ImageFeatures`."""

    @abstractmethod
    def encode_text_raw(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode texts with the frozen text tower, before the trainable projection: ``[N, D_text]``."""

    @abstractmethod
    def project_text(self, raw: torch.Tensor) -> torch.Tensor:
        """Map frozen text-tower embeddings ``[N, D_text]`` into the shared space ``[N, embed_dim]``."""

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode texts into the shared embedding space: ``[N, embed_dim]``."""
        return self.project_text(self.encode_text_raw(texts))

    @property
    @abstractmethod
    def adapter_points(self) -> list[tuple[str, int]]:
        """The modules after which adapters go, as ``(qualified module name, channels)`` pairs."""

    @property
    def text_dim(self) -> int:
        """Width of the frozen text tower's output."""
        raise NotImplementedError

    def freeze_towers(self) -> None:
        """Freeze every parameter except the trainable projections (named ``*_projection``)."""
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name.split(".")[0].endswith("_projection"))

    def train(self, mode: bool = True) -> VisionLanguageEncoder:
        """Switch mode, keeping frozen towers in eval so batch-norm statistics and dropout stay fixed.

        Modules flagged ``usvl_adapter`` (adapters, and batch norms whose statistics are adapted) follow ``mode``.
        """
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        for module in self.modules():
            if getattr(module, "usvl_adapter", False):
                module.train(mode)
        return self

    @property
    def unregistered_parameters(self) -> int:
        """Parameters of frozen parts held outside the module tree (e.g. a lazily loaded text tower), for counts."""
        return 0

    def frozen_modules(self) -> list[nn.Module]:
        """The frozen towers, kept in eval mode during training."""
        return []
