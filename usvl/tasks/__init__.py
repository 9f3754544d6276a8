"""LightningModules: one per task."""

from usvl.tasks.base import AdaptedEncoderTask
from usvl.tasks.classification import ClassificationTask
from usvl.tasks.segmentation import SegmentationTask

__all__ = ["AdaptedEncoderTask", "ClassificationTask", "SegmentationTask"]
