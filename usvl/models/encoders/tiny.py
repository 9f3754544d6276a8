"""``test/tiny-vit-clip``: a tiny, randomly initialised configuration of a real open_clip CLIP, for fast tests.

The way timm's ``test_vit`` is a real ``VisionTransformer`` at toy size, this encoder is open_clip's own CLIP
(``VisionTransformer`` image tower with a CLS token and ``nn.MultiheadAttention`` blocks, causal text transformer)
built from the model config ``configs/usvl-tiny-vit-clip.json`` next to this module, loaded through
:class:`~usvl.models.encoders.openclip.OpenCLIPEncoder`. Tests on it therefore run the real open_clip path:
feature taps by forward hooks, LoRA on ``nn.MultiheadAttention``, Mona on token sequences, full fine-tuning of
``model.visual``. The weights are random but seeded, so two builds with the same arguments are identical (a
trainable-only checkpoint reloads onto the same frozen towers). The tokenizer is open_clip's BPE tokenizer, whose
vocabulary ships inside the ``open_clip_torch`` package (no download).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from usvl.models.encoders.openclip import OpenCLIPEncoder, merge_config
from usvl.models.encoders.registry import register_encoder

TINY_VIT_CLIP_CONFIG = Path(__file__).with_name("configs") / "usvl-tiny-vit-clip.json"
"""The open_clip model config of the tiny ViT-CLIP (the defaults of every :class:`TinyViTCLIP` argument)."""

POOL_TYPES = {"cls": "tok", "mean": "avg"}
"""usvl pooling names and the open_clip ``vision_cfg.pool_type`` each sets."""


ARGUMENT_KEYS = {
    "embed_dim": ("embed_dim",),
    "img_size": ("vision_cfg", "image_size"),
    "patch_size": ("vision_cfg", "patch_size"),
    "width": ("vision_cfg", "width"),
    "depth": ("vision_cfg", "layers"),
    "mlp_ratio": ("vision_cfg", "mlp_ratio"),
    "text_width": ("text_cfg", "width"),
    "text_layers": ("text_cfg", "layers"),
    "text_heads": ("text_cfg", "heads"),
    "max_length": ("text_cfg", "context_length"),
}
"""The open_clip config key each :class:`TinyViTCLIP` argument sets (``heads`` and ``pooling`` are converted)."""


def tiny_config_overrides(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The open_clip config overrides that the :class:`TinyViTCLIP` arguments given (not ``None``) stand for.

    Raises:
        ValueError: ``pooling`` is unknown, or ``heads`` does not divide the ViT width.
    """
    overrides: dict[str, Any] = {}

    def put(path: tuple[str, ...], value: Any) -> None:
        section = overrides
        for key in path[:-1]:
            section = section.setdefault(key, {})
        section[path[-1]] = value

    for name, path in ARGUMENT_KEYS.items():
        if arguments.get(name) is not None:
            put(path, arguments[name])
    pooling = arguments.get("pooling")
    if pooling is not None:
        if pooling not in POOL_TYPES:
            raise ValueError(f"Unknown pooling '{pooling}'; use 'cls' or 'mean'")
        put(("vision_cfg", "pool_type"), POOL_TYPES[pooling])
    width, heads = arguments.get("width"), arguments.get("heads")
    if width is not None or heads is not None:
        shipped = json.loads(TINY_VIT_CLIP_CONFIG.read_text())["vision_cfg"]
        width = shipped["width"] if width is None else width
        heads = shipped["width"] // shipped["head_width"] if heads is None else heads
        if width % heads:
            raise ValueError(f"heads={heads} must divide the ViT width {width}")
        put(("vision_cfg", "head_width"), width // heads)
    return overrides


class TinyViTCLIP(OpenCLIPEncoder):
    """Tiny random open_clip CLIP (ViT + text transformer) through the real :class:`OpenCLIPEncoder` path.

    Every architecture argument defaults to the value in ``configs/usvl-tiny-vit-clip.json`` (``None``): a 64 px
    ViT with 8 px patches, width 64, 4 blocks of 2 heads, MLP ratio 2; a 2-layer text transformer of width 64 over
    64 tokens; a 32-wide shared space. Adapter points are the outputs of ``model.visual.transformer.resblocks.{i}``
    (token sequences ``[B, 1 + h·w, width]``); the tapped blocks' patch tokens become the maps ``[B, width, h, w]``.

    Args:
        embed_dim: Width of the shared image-text space (CLIP's ``embed_dim``).
        img_size: Input size of the ViT (square; sets the position-embedding grid).
        patch_size: Patch size of the ViT.
        width: Token width of the ViT.
        depth: Number of ViT blocks.
        heads: Attention heads per ViT block.
        mlp_ratio: Hidden width of the ViT MLPs relative to ``width``.
        feature_taps: Indices of the ViT blocks whose patch tokens become ``ImageFeatures.maps``.
        pooling: ``cls`` takes the CLS token; ``mean`` averages the patch tokens (open_clip's ``pool_type``).
        text_width: Width of the text transformer.
        text_layers: Layers of the text transformer.
        text_heads: Attention heads of the text transformer.
        max_length: Context length of the text transformer (longer texts are truncated).
        seed: Seed of the random initialisation (the towers do not depend on the global RNG).

    Raises:
        ValueError: A feature tap is outside ``[0, depth)``, ``pooling`` is unknown, or ``heads`` does not divide
            ``width``.
    """

    encoder_id = "test/tiny-vit-clip"

    def __init__(
        self,
        embed_dim: int | None = None,
        img_size: int | None = None,
        patch_size: int | None = None,
        width: int | None = None,
        depth: int | None = None,
        heads: int | None = None,
        mlp_ratio: float | None = None,
        feature_taps: Sequence[int] = (1, 2, 3),
        pooling: Literal["cls", "mean"] | None = None,
        text_width: int | None = None,
        text_layers: int | None = None,
        text_heads: int | None = None,
        max_length: int | None = None,
        seed: int = 0,
    ) -> None:
        overrides = tiny_config_overrides(dict(
            embed_dim=embed_dim, img_size=img_size, patch_size=patch_size, width=width, depth=depth, heads=heads,
            mlp_ratio=mlp_ratio, pooling=pooling, text_width=text_width, text_layers=text_layers,
            text_heads=text_heads, max_length=max_length,
        ))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            super().__init__(str(TINY_VIT_CLIP_CONFIG), feature_taps=feature_taps, allow_random=True,
                             model_config=overrides or None)
        self.config = {
            "model_config": merge_config(json.loads(TINY_VIT_CLIP_CONFIG.read_text()), overrides),
            "feature_taps": list(self.feature_taps),
            "seed": seed,
        }
        digest = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:12]
        self.encoder_id = f"{type(self).encoder_id}@{digest}"


@register_encoder("test/tiny-vit-clip")
def tiny_vit_clip(**kwargs) -> TinyViTCLIP:
    """Tiny random open_clip ViT-CLIP for tests (no pretrained weights)."""
    return TinyViTCLIP(**kwargs)
