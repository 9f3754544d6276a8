"""The one way a task builds its head: ``head(feature_dims, embed_dim, num_outputs)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import nn


class HeadFactory(Protocol):
    """Builds a head from what the encoder gives and what the task predicts.

    Every head class takes these three positional arguments first, so a config names the head by its
    ``class_path`` and sets only the remaining ``init_args``; the task supplies the three.

    Args:
        feature_dims: Channels of the encoder's tapped maps, shallow to deep (``encoder.feature_dims``).
        embed_dim: Width of the shared image-text space (``encoder.embed_dim``).
        num_outputs: Logits per image (classification: the number of classes) or per pixel (binary
            segmentation: 1).
    """

    def __call__(self, feature_dims: Sequence[int], embed_dim: int, num_outputs: int, /) -> nn.Module:
        """Build the head."""
        ...
