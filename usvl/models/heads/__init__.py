"""Task heads: take ImageFeatures (+ text embeddings), return logits; all built as ``HeadFactory`` says."""

from usvl.models.heads.classification import PromptSimilarityHead, class_prototypes
from usvl.models.heads.factory import HeadFactory
from usvl.models.heads.lexicon import DescriptorHeads
from usvl.models.heads.segmentation import FiLM, MultiScaleSegmentationHead, PixelTextSimilarity

__all__ = [
    "DescriptorHeads",
    "FiLM",
    "HeadFactory",
    "MultiScaleSegmentationHead",
    "PixelTextSimilarity",
    "PromptSimilarityHead",
    "class_prototypes",
]
