"""Registry of synthetic presets."""

from .base import Preset
from .breast import BREAST
from .thyroid import THYROID

PRESETS: dict[str, Preset] = {THYROID.name: THYROID, BREAST.name: BREAST}

__all__ = ["PRESETS", "Preset"]
