"""Evaluation metrics: classification, segmentation (explicit empty-mask policy) and image-text retrieval."""

from usvl.metrics.classification import classification_metrics
from usvl.metrics.retrieval import RetrievalRecall, caption_ids, retrieval_recall
from usvl.metrics.segmentation import CASE_NAMES, SegmentationMetrics, asd, dice, hd95, iou, segmentation_scores

__all__ = [
    "CASE_NAMES",
    "RetrievalRecall",
    "SegmentationMetrics",
    "asd",
    "caption_ids",
    "classification_metrics",
    "dice",
    "hd95",
    "iou",
    "retrieval_recall",
    "segmentation_scores",
]
