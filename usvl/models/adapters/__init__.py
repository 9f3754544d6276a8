"""Adapters that make a frozen encoder trainable at a small cost."""

from usvl.models.adapters.base import AdaptedModule, Adapter, NoAdapter
from usvl.models.adapters.mona import (
    MONA_VARIANTS,
    FrequencyDepthwiseOp,
    FrequencyFilter,
    HybridDepthwiseOp,
    MonaAdapter,
    MonaLayer,
    MultiScaleDepthwiseOp,
    NoiseAwareDepthwiseOp,
    NoiseEstimator,
    build_mona_op,
)

__all__ = [
    "MONA_VARIANTS",
    "AdaptedModule",
    "Adapter",
    "FrequencyDepthwiseOp",
    "FrequencyFilter",
    "HybridDepthwiseOp",
    "MonaAdapter",
    "MonaLayer",
    "MultiScaleDepthwiseOp",
    "NoAdapter",
    "NoiseAwareDepthwiseOp",
    "NoiseEstimator",
    "build_mona_op",
]
