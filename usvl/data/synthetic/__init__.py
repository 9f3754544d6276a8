"""Procedural B-mode ultrasound generator (numpy/scipy/Pillow only).

Presets: ``thyroid`` (TN3K/DDTI-like, TI-RADS), ``breast`` (BUSI-like, BI-RADS), ``ln-int`` and ``ln-ext`` (cervical
lymph nodes, benign vs metastatic, seen by two centres: a cross-centre pair), ``prostate`` (micro-US gland
segmentation, endocavity sector probe).
"""

from .presets import PRESETS, Preset
from .render import SyntheticSample, render_sample
from .version import GENERATOR_VERSION
from .writer import generate_dataset

PROFILES: dict[str, dict[str, int]] = {
    "default": {"train": 1000, "val": 200, "test": 500},
    "small": {"train": 300, "val": 100, "test": 200},
    "tiny": {"train": 24, "val": 8, "test": 8},
}

__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "PROFILES",
    "Preset",
    "SyntheticSample",
    "generate_dataset",
    "render_sample",
]
