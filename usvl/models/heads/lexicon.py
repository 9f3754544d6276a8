"""Descriptor heads: one linear read-out per lexicon descriptor on the image embedding."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class DescriptorHeads(nn.Module):
    """Linear heads on the pooled image embedding, one per descriptor.

    A single-label descriptor (TI-RADS composition, ...) gets one logit per value (softmax); a multi-label descriptor
    (echogenic foci, calcifications) one logit per value (a sigmoid each). Together they cost one
    ``embed_dim x sum(values)`` matrix product per image, next to the encoder's millions.

    Args:
        embed_dim: Width of the image embedding (``encoder.embed_dim``).
        sizes: Outputs per descriptor, in order (:meth:`usvl.lexicon.Lexicon.head_sizes`).
        dropout: Dropout on the embedding before the heads (training only).
    """

    def __init__(self, embed_dim: int, sizes: Mapping[str, int], dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.heads = nn.ModuleDict({name: nn.Linear(embed_dim, size) for name, size in sizes.items()})

    def forward(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per descriptor, ``[B, values]``, from the image embedding ``[B, embed_dim]``."""
        x = self.dropout(embedding)
        return {name: head(x) for name, head in self.heads.items()}
