"""Registry of synthetic presets."""

from .base import Preset
from .breast import BREAST
from .lymph_node import LN_EXT, LN_INT
from .prostate import PROSTATE
from .thyroid import THYROID

PRESETS: dict[str, Preset] = {p.name: p for p in (THYROID, BREAST, LN_INT, LN_EXT, PROSTATE)}

__all__ = ["PRESETS", "Preset"]
