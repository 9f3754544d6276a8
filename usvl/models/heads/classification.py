"""Classification heads over image features, conditioned on class text embeddings."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from usvl.models.encoders.base import ImageFeatures


class PromptSimilarityHead(nn.Module):
    """Logits = learnable scale x cosine(image embedding, class text prototype), plus an optional linear head.

    The class prototypes are the normalised means of the projected descriptions of each class.

    Args:
        feature_dims: Channels of the encoder's tapped maps (unused: the head reads the pooled embedding; taken so
            that every head is built the same way, see :class:`~usvl.models.heads.HeadFactory`).
        embed_dim: Width of the shared image-text space.
        num_classes: Number of classes (linked from the data module).
        linear: Add a linear classifier on the image embedding to the similarity logits.
        init_temperature: Initial temperature; the logit scale starts at ``1 / init_temperature``.
        max_scale: Upper clamp of the logit scale (CLIP uses 100).
    """

    uses_maps = False
    """The head reads the pooled embedding only, not ``ImageFeatures.maps`` (so frozen features can be cached)."""

    def __init__(
        self,
        feature_dims: Sequence[int],
        embed_dim: int,
        num_classes: int,
        linear: bool = True,
        init_temperature: float = 0.07,
        max_scale: float = 100.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_scale = max_scale
        self.linear = nn.Linear(embed_dim, num_classes) if linear else None
        if self.linear is not None:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, features: ImageFeatures, class_text: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, K]`` from image features and class prototypes ``[K, D]``."""
        if class_text.shape[0] != self.num_classes:
            raise ValueError(f"Got {class_text.shape[0]} class text embeddings for {self.num_classes} classes")
        image = F.normalize(features.global_embedding, dim=-1)
        prototypes = F.normalize(class_text, dim=-1)
        logits = self.log_scale.exp().clamp(max=self.max_scale) * image @ prototypes.t()
        if self.linear is not None:
            logits = logits + self.linear(features.global_embedding)
        return logits


def class_prototypes(projected: torch.Tensor) -> torch.Tensor:
    """Class prototypes ``[K, D]`` from projected descriptions ``[K, P, D]``: mean of unit vectors, renormalised."""
    return F.normalize(F.normalize(projected, dim=-1).mean(dim=1), dim=-1)
