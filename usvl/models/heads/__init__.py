"""Task heads: take ImageFeatures (+ text embeddings), return logits."""

from usvl.models.heads.classification import PromptSimilarityHead, class_prototypes

__all__ = ["PromptSimilarityHead", "class_prototypes"]
