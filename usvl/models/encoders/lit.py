"""LiT-style pairs: any timm image model + any Hugging Face text model, ``timm+hf/<image>+<text>``.

Example: ``timm+hf/vit_small_patch16_224.augreg_in21k+sentence-transformers/all-MiniLM-L6-v2``. The image tower's
weights resolve through timm (a local file given as ``image_weights``, the cache, then the hub), the text tower's
through transformers (a local folder, the cache, then the hub); offline with nothing found, one
:class:`MissingWeightsError` says what is missing. Both towers are frozen; trainable projections map them into one
space. Adapter points and feature taps come from timm's ``feature_info`` (stages of CNNs, blocks of ViTs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from usvl.models.encoders.base import VisionLanguageEncoder
from usvl.models.encoders.common import (
    cached_hub_file,
    hf_model_files,
    load_hf_pretrained,
    match_targets,
    mean_pooled_text,
    pointwise_convolutions,
)
from usvl.models.encoders.registry import register_encoder_family
from usvl.models.encoders.weights import MissingWeightsError


def create_timm_tower(name: str, pretrained: bool, weights: str | None) -> nn.Module:
    """A timm model without classifier; weights from a local file, the cache or the hub.

    Raises:
        MissingWeightsError: Pretrained weights cannot be found offline.
    """
    import timm

    overlay = {"file": str(Path(weights).expanduser())} if weights else None
    try:
        return timm.create_model(name, pretrained=pretrained or bool(weights), num_classes=0,
                                 pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError) as error:
        raise MissingWeightsError(
            f"Cannot load timm weights for '{name}': {error}. Pass image_weights=/path/to/file, or on a connected "
            f"machine run `python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` and copy the "
            "Hugging Face cache here."
        ) from error


class TimmHFEncoder(VisionLanguageEncoder):
    """A timm image tower and a Hugging Face text tower (mean-pooled), both frozen, with trainable projections.

    Args:
        image_model: timm model name (with optional ``.tag``).
        text_model: Hugging Face id or local folder of a text encoder (BERT-like).
        embed_dim: Width of the shared space.
        feature_taps: Indices into timm's ``feature_info`` whose outputs become ``ImageFeatures.maps``.
        image_pretrained: Load pretrained image weights (``False``: random init, for tests).
        image_weights: Local file with the image tower's weights (overrides the cache/hub).
        normalization: ``model`` uses timm's mean/std for the image model; ``none`` feeds [0, 1] pixels.
        cache_dir: Hugging Face cache folder for the text model.
    """

    def __init__(
        self,
        image_model: str,
        text_model: str,
        embed_dim: int = 256,
        feature_taps: Sequence[int] = (1, 2, 3),
        image_pretrained: bool = True,
        image_weights: str | None = None,
        normalization: Literal["model", "none"] = "model",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.image_tower = create_timm_tower(image_model, image_pretrained, image_weights)
        self.text_tower, self.tokenizer, self._text_source = load_hf_pretrained(text_model, cache_dir)
        self._cache_dir = cache_dir
        self._image_weights = str(Path(image_weights).expanduser()) if image_weights else None
        self._image_pretrained = image_pretrained
        self.feature_info = list(self.image_tower.feature_info)
        self.feature_taps = tuple(feature_taps)
        self.check_feature_taps()
        self.feature_dims = [int(self.feature_info[i]["num_chs"]) for i in self.feature_taps]
        self.num_prefix_tokens = int(getattr(self.image_tower, "num_prefix_tokens", 0))
        self.embed_dim = embed_dim
        config = self.image_tower.pretrained_cfg
        if normalization == "model":
            self.image_mean, self.image_std = tuple(config["mean"]), tuple(config["std"])
        else:
            self.image_mean, self.image_std = (0.0,) * 3, (1.0,) * 3
        self.image_projection = nn.Sequential(nn.LayerNorm(self.image_tower.num_features),
                                              nn.Linear(self.image_tower.num_features, embed_dim))
        self.text_projection = nn.Linear(self.text_tower.config.hidden_size, embed_dim)
        if not match_targets(self, self.lora_targets):
            self.lora_targets = pointwise_convolutions(self.image_tower, prefix="image_tower.")
        self.freeze_towers()
        self.train()
        tag = hashlib.sha256(f"{image_model}|{image_weights}|{image_pretrained}|{text_model}".encode()).hexdigest()
        self.encoder_id = f"timm+hf/{image_model}+{text_model}@{tag[:12]}"

    @property
    def text_dim(self) -> int:
        """Hidden width of the text model."""
        return int(self.text_tower.config.hidden_size)

    @property
    def adapter_points(self) -> list[tuple[str, int]]:
        """After every feature level timm reports (CNN stages, ViT blocks)."""
        return [(f"image_tower.{info['module']}", int(info["num_chs"])) for info in self.feature_info]

    def frozen_modules(self) -> list[nn.Module]:
        """Both towers."""
        return [self.image_tower, self.text_tower]

    def weight_files(self) -> list[Path]:
        """The image weights (the local file, or timm's cached hub file) and the text model's folder files."""
        files: list[Path] = []
        if self._image_weights:
            files.append(Path(self._image_weights))
        elif self._image_pretrained:
            hub_id = self.image_tower.pretrained_cfg.get("hf_hub_id")
            cached = cached_hub_file(hub_id, ("model.safetensors", "pytorch_model.bin")) if hub_id else None
            files += [cached] if cached else []
        return files + hf_model_files(self._text_source, self._cache_dir)

    def forward_image_tower(self, images: torch.Tensor) -> torch.Tensor:
        """The tower's own timm ``forward_features`` and pre-logits ``forward_head``: ``[B, num_features]``."""
        return self.image_tower.forward_head(self.image_tower.forward_features(images), pre_logits=True)

    def encode_text_raw(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean-pooled token embeddings of the frozen text model ``[N, hidden]``."""
        return mean_pooled_text(self.text_tower, self.tokenizer, texts, max_length=128).float()

    def project_text(self, raw: torch.Tensor) -> torch.Tensor:
        """Trainable projection into the shared space."""
        return self.text_projection(raw)


@register_encoder_family("timm+hf/")
def timm_hf_encoder(pair: str, **kwargs) -> TimmHFEncoder:
    """``timm+hf/<timm image model>+<HF text model>``.

    Raises:
        ValueError: The name does not hold two models joined by ``+``.
    """
    image_model, separator, text_model = pair.partition("+")
    if not separator or not image_model or not text_model:
        raise ValueError(f"Expected 'timm+hf/<image model>+<text model>', got 'timm+hf/{pair}'")
    return TimmHFEncoder(image_model, text_model, **kwargs)
