"""Adapters that make a frozen encoder trainable at a small cost."""

from usvl.models.adapters.base import AdaptedModule, Adapter, NoAdapter
from usvl.models.adapters.full import FullFineTune
from usvl.models.adapters.lora import DEFAULT_LORA_TARGETS, LoRAAdapter, lora_layers, match_targets
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
    "DEFAULT_LORA_TARGETS",
    "MONA_VARIANTS",
    "AdaptedModule",
    "Adapter",
    "FrequencyDepthwiseOp",
    "FrequencyFilter",
    "FullFineTune",
    "HybridDepthwiseOp",
    "LoRAAdapter",
    "MonaAdapter",
    "MonaLayer",
    "MultiScaleDepthwiseOp",
    "NoAdapter",
    "NoiseAwareDepthwiseOp",
    "NoiseEstimator",
    "build_mona_op",
    "lora_layers",
    "match_targets",
]
