"""The embedded offline encoder: EfficientNet-Lite0 image tower + all-MiniLM-L6-v2 text tower (LiT-style).

Both towers are real pretrained networks that ship inside packages on the package index, so this encoder works on
a machine with no model hub. The towers stay frozen; two linear projections map them into a shared space.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from usvl.models.encoders.base import VisionLanguageEncoder
from usvl.models.encoders.common import mean_pooled_text
from usvl.models.encoders.registry import register_encoder
from usvl.models.encoders.weights import EFFICIENTNET_LITE0, MINILM_L6_V2

EFFICIENTNET_LITE0_STAGE_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
EFFICIENTNET_LITE0_HEAD_CHANNELS = 1280
MINILM_DIM = 384
TEXT_TOWER_SUFFIXES = (".safetensors", ".bin", ".json", ".txt")
"""Files of the packaged MiniLM folder that determine its embeddings: weights, config, tokenizer."""


def build_efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """Build timm ``tf_efficientnet_lite0``, loading the packaged ImageNet weights when ``pretrained``.

    The packaged state dict uses ``efficientnet_pytorch`` key names; its tensors map one to one, in order, onto
    timm's. Every pair is checked for shape before loading strictly.
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    if pretrained:
        source = torch.load(EFFICIENTNET_LITE0.resolve(), map_location="cpu", weights_only=True)
        target_keys = list(model.state_dict().keys())
        source_items = [(key, value) for key, value in source.items() if not key.startswith("_fc.")]
        if len(source_items) != len(target_keys):
            raise RuntimeError(
                f"EfficientNet-Lite0 weights hold {len(source_items)} tensors, timm expects {len(target_keys)}"
            )
        mapped = {}
        for target_key, (source_key, value) in zip(target_keys, source_items, strict=True):
            expected = model.state_dict()[target_key].shape
            if value.shape != expected:
                raise RuntimeError(
                    f"EfficientNet-Lite0 weight {source_key} {tuple(value.shape)} does not fit "
                    f"{target_key} {tuple(expected)}"
                )
            mapped[target_key] = value
        model.load_state_dict(mapped, strict=True)
    return model


class MiniLMTextTower(nn.Module):
    """all-MiniLM-L6-v2 with mean pooling over tokens (as sentence-transformers does), frozen."""

    def __init__(self, pretrained: bool = True, max_length: int = 128) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

        model_dir = MINILM_L6_V2.resolve(verify=pretrained).parent
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        if pretrained:
            self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        else:
            config = BertConfig(vocab_size=self.tokenizer.vocab_size, hidden_size=MINILM_DIM, num_hidden_layers=1,
                                num_attention_heads=4, intermediate_size=4 * MINILM_DIM)
            self.model = BertModel(config)
        self.max_length = max_length
        self.model.requires_grad_(False)
        self.model.eval()

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean-pooled token embeddings ``[N, 384]`` (not normalised)."""
        return mean_pooled_text(self.model, self.tokenizer, texts, self.max_length)


MINILM_PARAMETERS = 22_713_216
"""Parameters of all-MiniLM-L6-v2 (the frozen text tower)."""


class LiTEffNetMiniLM(VisionLanguageEncoder):
    """Frozen EfficientNet-Lite0 (ImageNet) + frozen all-MiniLM-L6-v2, trainable projections (LiT-style).

    Args:
        embed_dim: Width of the shared image-text space.
        feature_taps: Indices of the EfficientNet stages (0-6) whose outputs become ``ImageFeatures.maps``.
        multiscale: Concatenate the pooled tapped maps to the pooled head conv, so cues from shallow stages
            (margins, echogenic foci) reach the global embedding.
        pooling: ``avg`` (global average) or ``avgmax`` (average and max concatenated; max keeps small, bright,
            local cues that averaging over the whole image dilutes).
        norm_stats: ``frozen`` keeps the ImageNet batch-norm statistics of the image tower; ``adapt`` re-estimates
            them on the training data (AdaBN-style: batch statistics while training, running averages saved in the
            checkpoint). Batch-norm weights stay frozen either way.
        pretrained: Load the packaged weights (verified by sha256). ``False`` builds random towers (tests).
    """

    encoder_id = "embedded/lit-effnet-minilm"
    lora_targets = r"image_tower\.blocks\.[2-6]\.\d+\.conv_pwl?"
    """LoRA default: the 1x1 expansion and projection convolutions of the inverted-residual blocks of stages 2-6
    (the stages Mona adapts in the shipped configs); the depthwise convolutions stay untouched."""
    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.5, 0.5, 0.5)

    def __init__(
        self,
        embed_dim: int = 256,
        feature_taps: Sequence[int] = (1, 2, 4, 6),
        multiscale: bool = True,
        pooling: Literal["avg", "avgmax"] = "avg",
        norm_stats: Literal["frozen", "adapt"] = "frozen",
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.feature_taps = tuple(feature_taps)
        self.multiscale = multiscale
        self.pooling = pooling
        self.pretrained = pretrained
        self.image_tower = build_efficientnet_lite0(pretrained)
        self._text_tower: list[MiniLMTextTower] = []
        self.check_feature_taps()
        self.feature_dims = [EFFICIENTNET_LITE0_STAGE_CHANNELS[i] for i in self.feature_taps]
        pooled_dim = EFFICIENTNET_LITE0_HEAD_CHANNELS
        if multiscale:
            pooled_dim += sum(self.feature_dims)
        if pooling == "avgmax":
            pooled_dim *= 2
        self.pooled_dim = pooled_dim
        self.image_projection = nn.Sequential(nn.LayerNorm(pooled_dim), nn.Linear(pooled_dim, embed_dim))
        self.text_projection = nn.Linear(MINILM_DIM, embed_dim)
        self.norm_stats = norm_stats
        self.freeze_towers()
        if norm_stats == "adapt":
            for module in self.image_tower.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.usvl_adapter = True
        self.train()
        if pretrained:
            self.encoder_id = f"{self.encoder_id}@{EFFICIENTNET_LITE0.sha256[:12]}+{MINILM_L6_V2.sha256[:12]}"
        else:
            self.encoder_id = f"{self.encoder_id}@random"

    @property
    def text_dim(self) -> int:
        """Width of the MiniLM sentence embedding."""
        return MINILM_DIM

    @property
    def adapter_points(self) -> list[tuple[str, int]]:
        """After each of the seven EfficientNet stages."""
        return [(f"image_tower.blocks.{i}", c) for i, c in enumerate(EFFICIENTNET_LITE0_STAGE_CHANNELS)]

    def frozen_modules(self) -> list[nn.Module]:
        """The image tower (its batch-norm statistics stay fixed) and the text tower."""
        return [self.image_tower]

    def forward_image_tower(self, images: torch.Tensor) -> torch.Tensor:
        """The (adapted) EfficientNet's own timm ``forward_features``: the head conv map ``[B, 1280, h, w]``."""
        return self.image_tower.forward_features(images)

    def pool_image(self, output: torch.Tensor, maps: list[torch.Tensor]) -> torch.Tensor:
        """Pool the head conv map (and, with ``multiscale``, the tapped stage maps) and concatenate them."""
        pooled_maps = [output, *maps] if self.multiscale else [output]
        return torch.cat([self._pool(m) for m in pooled_maps], dim=1)

    def _pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        average = feature_map.mean(dim=(2, 3))
        if self.pooling == "avg":
            return average
        return torch.cat([average, feature_map.amax(dim=(2, 3))], dim=1)

    @property
    def unregistered_parameters(self) -> int:
        """The MiniLM text tower (22,713,216 parameters), kept out of the state dict and loaded on first use."""
        return MINILM_PARAMETERS

    def _text(self) -> MiniLMTextTower:
        if not self._text_tower:
            self._text_tower.append(MiniLMTextTower(pretrained=self.pretrained))
        return self._text_tower[0]

    def encode_text_raw(self, texts: Sequence[str]) -> torch.Tensor:
        """Frozen MiniLM sentence embeddings ``[N, 384]``; the text tower loads on first use."""
        return self._text()(texts).float()

    def release_text_tower(self) -> bool:
        """Drop the loaded MiniLM tower (about 90 MB); the next :meth:`encode_text_raw` loads it again."""
        if not self._text_tower:
            return False
        self._text_tower.clear()
        gc.collect()
        return True

    def weight_files(self) -> list[Path]:
        """The EfficientNet-Lite0 file, the MiniLM weights and its tokenizer and config files; none when random."""
        if not self.pretrained:
            return []
        text_folder = MINILM_L6_V2.resolve(verify=False).parent
        text_files = sorted(p for p in text_folder.iterdir() if p.is_file() and p.suffix in TEXT_TOWER_SUFFIXES)
        return [EFFICIENTNET_LITE0.resolve(verify=False), *text_files]

    def project_text(self, raw: torch.Tensor) -> torch.Tensor:
        """Trainable linear projection of text embeddings into the shared space."""
        return self.text_projection(raw)


@register_encoder("embedded/lit-effnet-minilm")
def lit_effnet_minilm(**kwargs) -> LiTEffNetMiniLM:
    """EfficientNet-Lite0 + all-MiniLM-L6-v2 from their packages (offline default)."""
    return LiTEffNetMiniLM(**kwargs)

