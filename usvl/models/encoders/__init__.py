"""Vision-language encoders behind one interface, in one registry."""

from usvl.models.encoders.base import ImageFeatures, VisionLanguageEncoder
from usvl.models.encoders.embedded import LiTEffNetMiniLM
from usvl.models.encoders.registry import build_encoder, list_encoders, register_encoder
from usvl.models.encoders.weights import MissingWeightsError, WeightsChecksumError

__all__ = [
    "ImageFeatures",
    "LiTEffNetMiniLM",
    "MissingWeightsError",
    "VisionLanguageEncoder",
    "WeightsChecksumError",
    "build_encoder",
    "list_encoders",
    "register_encoder",
]
