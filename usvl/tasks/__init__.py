"""LightningModules: one per task."""

from usvl.tasks.base import AdaptedEncoderTask
from usvl.tasks.classification import ClassificationTask

__all__ = ["AdaptedEncoderTask", "ClassificationTask"]
