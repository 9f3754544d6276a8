"""LightningModules: one per task."""

from usvl.tasks.base import AdaptedEncoderTask
from usvl.tasks.classification import ClassificationTask
from usvl.tasks.contrastive import ContrastiveTask
from usvl.tasks.lexicon import LexiconTask
from usvl.tasks.segmentation import SegmentationTask
from usvl.tasks.zeroshot import ZeroShotClassificationTask
from usvl.tasks.zeroshot_lexicon import ZeroShotLexiconTask

__all__ = ["AdaptedEncoderTask", "ClassificationTask", "ContrastiveTask", "LexiconTask", "SegmentationTask",
           "ZeroShotClassificationTask", "ZeroShotLexiconTask"]
