"""Vision-language encoders behind one interface, in one registry.

Every backend taps features one way: ``feature_taps`` index the encoder's ``adapter_points`` (ViT blocks, CNN
stages), and :meth:`VisionLanguageEncoder.encode_image` records those modules' outputs with forward hooks
(:func:`usvl.models.encoders.common.capture_outputs`) while the tower runs its own forward. Adapters wrap the module
at a point, so taps see the adapted output. ViT helpers (patch size, grid, prefix tokens, tokens as maps) live in
:mod:`usvl.models.encoders.vit`.
"""

from usvl.models.encoders.base import ImageFeatures, VisionLanguageEncoder
from usvl.models.encoders.embedded import LiTEffNetMiniLM
from usvl.models.encoders.hf import HFCLIPEncoder
from usvl.models.encoders.lit import TimmHFEncoder
from usvl.models.encoders.openclip import OpenCLIPEncoder
from usvl.models.encoders.registry import build_encoder, list_encoders, register_encoder, register_encoder_family
from usvl.models.encoders.tiny import TinyViTCLIP
from usvl.models.encoders.vit import tokens_to_map, vit_grid_size, vit_num_prefix_tokens, vit_patch_size
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
    "tokens_to_map",
    "vit_grid_size",
    "vit_num_prefix_tokens",
    "vit_patch_size",
]
