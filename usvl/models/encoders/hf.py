"""Hugging Face transformers CLIP and SigLIP encoders: ``hf/<hub id or local folder>``.

Examples: ``hf/openai/clip-vit-base-patch16``, ``hf/google/siglip-base-patch16-224``, ``hf//data/models/my-clip``.
Weights resolve from a local folder, then the Hugging Face cache, then the hub; offline with nothing cached, one
:class:`MissingWeightsError` says what is missing and how to get it. Both towers (and the model's own projections)
stay frozen; two trainable linear maps initialised to the identity sit on top.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from usvl.models.encoders.base import VisionLanguageEncoder
from usvl.models.encoders.common import hf_model_files, identity_linear, load_hf_pretrained
from usvl.models.encoders.registry import register_encoder_family

DEFAULT_STATS = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def _pooled(output) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose ``pooler_output`` it is (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFCLIPEncoder(VisionLanguageEncoder):
    """A transformers CLIP or SigLIP model behind the usvl encoder interface.

    Args:
        model: Hub id or local folder of a ``CLIPModel``/``SiglipModel`` checkpoint with its tokenizer.
        feature_taps: Vision encoder layer indices whose patch tokens become ``ImageFeatures.maps``.
        normalization: ``model`` uses the model's mean/std (from its image processor, else the family default);
            ``none`` feeds [0, 1] pixels.
        cache_dir: Hugging Face cache folder.
    """

    def __init__(
        self,
        model: str,
        feature_taps: Sequence[int] = (3, 6, 9),
        normalization: Literal["model", "none"] = "model",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, source = load_hf_pretrained(model, cache_dir)
        self._source, self._cache_dir = source, cache_dir
        vision = self.model.vision_model
        self.width = vision.config.hidden_size
        embeddings = vision.embeddings
        self.num_prefix_tokens = int(getattr(embeddings, "num_positions", 0) - getattr(embeddings, "num_patches", 0))
        self.feature_taps = tuple(feature_taps)
        self.check_feature_taps()
        self.feature_dims = [self.width] * len(self.feature_taps)
        config = self.model.config
        self.embed_dim = int(getattr(config, "projection_dim", 0) or config.text_config.hidden_size)
        family = "siglip" if "siglip" in self.model.config.model_type else "clip"
        mean, std = self._processor_stats(source, cache_dir) or DEFAULT_STATS[family]
        self.image_mean, self.image_std = (mean, std) if normalization == "model" else ((0.0,) * 3, (1.0,) * 3)
        self.image_projection = identity_linear(self.embed_dim)
        self.text_projection = identity_linear(self.embed_dim)
        self.image_tower_path = "model.vision_model"
        self.lora_targets = r"model\.vision_model\.encoder\.layers\.\d+\.self_attn\.(?:q|k|v|out)_proj"
        self.freeze_towers()
        self.train()
        tag = hashlib.sha256(source.encode()).hexdigest()[:12]
        self.encoder_id = f"hf/{model}@{tag}"

    @staticmethod
    def _processor_stats(source: str, cache_dir: str | None):
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(source, cache_dir=cache_dir)
        except (OSError, ValueError):
            return None
        return tuple(processor.image_mean), tuple(processor.image_std)

    @property
    def text_dim(self) -> int:
        """Width of the model's projected text embedding."""
        return self.embed_dim

    @property
    def adapter_points(self) -> list[tuple[str, int]]:
        """After every layer of the vision encoder."""
        layers = self.model.vision_model.encoder.layers
        return [(f"model.vision_model.encoder.layers.{i}", self.width) for i in range(len(layers))]

    def frozen_modules(self) -> list[nn.Module]:
        """The whole transformers model."""
        return [self.model]

    def weight_files(self) -> list[Path]:
        """The model folder's weights, config and tokenizer files (local folder or cached hub snapshot)."""
        return hf_model_files(self._source, self._cache_dir)

    def forward_image_tower(self, images: torch.Tensor) -> torch.Tensor:
        """The model's own projected image embedding ``[B, embed_dim]``."""
        return _pooled(self.model.get_image_features(pixel_values=images))

    @torch.no_grad()
    def encode_text_raw(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected text embeddings of the frozen text tower ``[N, embed_dim]``."""
        device = next(self.model.parameters()).device
        max_length = self.model.config.text_config.max_position_embeddings
        padding = "max_length" if "siglip" in self.model.config.model_type else True  # SigLIP was trained padded
        tokens = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length,
                                return_tensors="pt").to(device)
        tokens.pop("token_type_ids", None)
        return _pooled(self.model.get_text_features(**tokens)).float()

    def project_text(self, raw: torch.Tensor) -> torch.Tensor:
        """Trainable map on top of the model's text space (identity at initialisation)."""
        return self.text_projection(raw)


@register_encoder_family("hf/")
def hf_encoder(model: str, **kwargs) -> HFCLIPEncoder:
    """``hf/<hub id or local folder>`` (CLIP or SigLIP)."""
    return HFCLIPEncoder(model, **kwargs)
