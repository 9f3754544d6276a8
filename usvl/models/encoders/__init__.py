"""Vision-language encoders behind one interface, in one registry."""

from usvl.models.encoders.base import ImageFeatures, VisionLanguageEncoder
from usvl.models.encoders.embedded import LiTEffNetMiniLM
from usvl.models.encoders.openclip import OpenCLIPEncoder
from usvl.models.encoders.registry import build_encoder, list_encoders, register_encoder, register_encoder_family
from usvl.models.encoders.weights import MissingWeightsError, WeightsChecksumError

__all__ = [
    "ImageFeatures",
    "LiTEffNetMiniLM",
    "MissingWeightsError",
    "OpenCLIPEncoder",
    "VisionLanguageEncoder",
    "WeightsChecksumError",
    "build_encoder",
    "list_encoders",
    "register_encoder",
    "register_encoder_family",
]
