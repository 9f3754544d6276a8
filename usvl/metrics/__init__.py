"""Evaluation metrics: classification collections and segmentation scores with an explicit empty-mask policy."""

from usvl.metrics.classification import classification_metrics
from usvl.metrics.segmentation import CASE_NAMES, SegmentationMetrics, asd, dice, hd95, iou, segmentation_scores

__all__ = [
    "CASE_NAMES",
    "SegmentationMetrics",
    "asd",
    "classification_metrics",
    "dice",
    "hd95",
    "iou",
    "segmentation_scores",
]
