"""Task heads: take ImageFeatures (+ text embeddings), return logits."""

from usvl.models.heads.classification import PromptSimilarityHead, class_prototypes
from usvl.models.heads.segmentation import FiLM, MultiScaleSegmentationHead

__all__ = ["FiLM", "MultiScaleSegmentationHead", "PromptSimilarityHead", "class_prototypes"]
