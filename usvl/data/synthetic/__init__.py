"""Procedural B-mode ultrasound generator (numpy/scipy/Pillow only).

Presets: ``thyroid`` (TN3K/DDTI-like, TI-RADS), ``breast`` (BUSI-like, BI-RADS), ``ln-int`` and ``ln-ext`` (cervical
lymph nodes, benign vs metastatic, seen by two centres: a cross-centre pair), ``prostate`` (micro-US gland
segmentation, endocavity sector probe). Acquisition profiles (``ACQUISITIONS``: ``low_freq``, ``high_gain``,
``low_dynamic_range``, ``strong_tgc``, ``coarse_speckle``, ``deep``, ``compounded``, ``centre_ext``) image the same
scenes with other probe, receiver and display settings: a shift benchmark's test sets.
"""

from .acquisition import ACQUISITIONS, Acquisition, get_acquisition
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
    "ACQUISITIONS",
    "GENERATOR_VERSION",
    "Acquisition",
    "PRESETS",
    "PROFILES",
    "Preset",
    "SyntheticSample",
    "generate_dataset",
    "get_acquisition",
    "render_sample",
]
