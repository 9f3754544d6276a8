"""Vision-language encoders behind one interface, in one registry."""

from usvl.models.encoders.base import ImageFeatures, VisionLanguageEncoder
from usvl.models.encoders.embedded import LiTEffNetMiniLM
from usvl.models.encoders.hf import HFCLIPEncoder
from usvl.models.encoders.lit import TimmHFEncoder
from usvl.models.encoders.openclip import OpenCLIPEncoder
from usvl.models.encoders.registry import build_encoder, list_encoders, register_encoder, register_encoder_family
from usvl.models.encoders.tiny import TinyViTCLIP, vit_grid_size, vit_num_prefix_tokens, vit_patch_size
from usvl.models.encoders.weights import MissingWeightsError, WeightsChecksumError

__all__ = [
    "HFCLIPEncoder",
    "ImageFeatures",
    "LiTEffNetMiniLM",
    "MissingWeightsError",
    "OpenCLIPEncoder",
    "TinyViTCLIP",
    "VisionLanguageEncoder",
    "WeightsChecksumError",
    "build_encoder",
    "list_encoders",
    "register_encoder",
    "register_encoder_family",
    "TimmHFEncoder",
    "vit_grid_size",
    "vit_num_prefix_tokens",
    "vit_patch_size",
]
