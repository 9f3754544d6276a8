"""open_clip encoders: BiomedCLIP, OpenAI CLIP, MetaCLIP, UniMed-CLIP and any other open_clip model.

Names: ``openclip/<model>`` where ``<model>`` is an open_clip model name (``ViT-B-16``), a hub id
(``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``) or the path of an open_clip model-config JSON
file (architectures open_clip does not ship, e.g. UniMed-CLIP's ViT-B/16 + BiomedBERT pair:
``configs/paper/models/unimed-clip-vit-b16.json``); the file's stem becomes the model name. Weights resolve from, in
order: an explicit local checkpoint (``pretrained=/path/to/weights.bin``), the local Hugging Face / open_clip cache,
then the hub.
Offline with nothing cached, one :class:`MissingWeightsError` says what is missing and how to get it.

Both towers stay frozen, including CLIP's own projections; two trainable linear maps, initialised to the
identity, sit on top, so the adapted model starts exactly at the pretrained CLIP space (zero-shot included).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from copy import deepcopy
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from usvl.models.encoders.base import VisionLanguageEncoder
from usvl.models.encoders.common import cached_hub_file, identity_linear
from usvl.models.encoders.registry import register_encoder_family
from usvl.models.encoders.vit import vit_num_prefix_tokens
from usvl.models.encoders.weights import MissingWeightsError


def register_model_config(model: str) -> str:
    """Register an open_clip model-config JSON file under its stem and return that name; other names pass through.

    Raises:
        FileNotFoundError: ``model`` ends in ``.json`` but the file does not exist.
    """
    if not model.endswith(".json"):
        return model
    import open_clip

    path = Path(model).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"open_clip model config {path} does not exist")
    open_clip.add_model_config(path)
    return path.stem


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in recursively (nested mappings merge, other values replace)."""
    merged = deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = deepcopy(value)
    return merged


def config_overrides(model: str, overrides: Mapping[str, Any] | None, image_size: int | None) -> dict[str, Any]:
    """Top-level open_clip config sections (``embed_dim``, ``vision_cfg``, ...) that replace the named model's.

    Raises:
        ValueError: ``overrides`` is given for a model whose config open_clip does not hold (a ``hf-hub:`` id).
    """
    if not overrides:
        return {}
    import open_clip

    base = open_clip.get_model_config(model)
    if base is None:
        raise ValueError(f"model_config overrides need a registered open_clip config; '{model}' has none here")
    merged = merge_config(base, overrides)
    if image_size is not None:
        merged["vision_cfg"]["image_size"] = image_size
    return {key: merged[key] for key in overrides}


@lru_cache(maxsize=8)
def openclip_tokenizer(model: str, context_length: int):
    """open_clip's tokenizer for ``model`` at ``context_length``, built once (the BPE vocabulary takes ~0.4 s)."""
    import open_clip

    return open_clip.get_tokenizer(model, context_length=context_length)


def create_openclip_model(model: str, pretrained: str | None, cache_dir: str | None, image_size: int | None,
                          allow_random: bool, model_config: Mapping[str, Any] | None = None) -> nn.Module:
    """Build an open_clip model, resolving weights from a local path, the cache, then the hub.

    Args:
        model: open_clip model name, ``hf-hub:`` id, or path of a model-config JSON file.
        pretrained: Pretrained tag or local checkpoint file.
        cache_dir: Weights cache folder.
        image_size: Override of the input size.
        allow_random: Allow random initialisation when no weights are named.
        model_config: Overrides merged recursively into the model's open_clip config (e.g.
            ``{"vision_cfg": {"layers": 2}}``).

    Raises:
        MissingWeightsError: No weights were requested (and random init is not allowed), or they cannot be found
            locally and the hub is unreachable.
    """
    import open_clip

    model = register_model_config(model)
    kwargs = {"cache_dir": cache_dir, "force_image_size": image_size,
              **config_overrides(model, model_config, image_size)}
    hub_model = model.startswith("hf-hub:")
    if pretrained is None and not hub_model:
        if not allow_random:
            raise MissingWeightsError(
                f"No pretrained weights named for open_clip model '{model}'. Pass pretrained=<tag or local file> "
                f"(tags: open_clip.list_pretrained_tags_by_model('{model}')), or allow_random=true for tests."
            )
        return open_clip.create_model(model, pretrained=None, **kwargs)
    try:
        return open_clip.create_model(model, pretrained=pretrained, require_pretrained=True, **kwargs)
    except Exception as error:  # noqa: BLE001  (any loader failure becomes one actionable message)
        if pretrained and Path(pretrained).expanduser().is_file():
            raise
        source = model if hub_model else f"{model} / {pretrained}"
        raise MissingWeightsError(
            f"Cannot load open_clip weights for {source}: {type(error).__name__}: {error}. They are neither a "
            f"local file nor in the cache ({cache_dir or '~/.cache/huggingface'}), and the hub is unreachable. "
            f"On a connected machine run `python -c \"import open_clip; open_clip.create_model('{model}', "
            f"pretrained={pretrained!r})\"` and copy the cache here, or pass pretrained=/path/to/checkpoint."
        ) from error


OPENCLIP_HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
"""Weight files open_clip loads from an ``hf-hub:`` repository, in its order of preference."""


def openclip_weight_files(model: str, pretrained: str | None, cache_dir: str | None) -> list[Path]:
    """The files open_clip loads ``model`` from: a model-config JSON, a local checkpoint, or the cached hub file.

    Resolved from the local cache only (no network), in the order open_clip uses: a ``hf-hub:`` repository's
    ``open_clip_config.json`` and weights; a pretrained tag's hub file (safetensors first) or download-URL file
    (open_clip's ``~/.cache/clip``); a local file given as ``pretrained``. Random models have no files.
    """
    files = [Path(model).expanduser()] if model.endswith(".json") else []
    if model.startswith("hf-hub:"):
        repo = model[len("hf-hub:"):]
        files += [path for path in (cached_hub_file(repo, ("open_clip_config.json",), cache_dir),
                                    cached_hub_file(repo, OPENCLIP_HUB_WEIGHTS, cache_dir)) if path]
        return files
    if not pretrained:
        return files
    local = Path(pretrained).expanduser()
    if local.is_file():
        return [*files, local]
    import open_clip

    config = open_clip.get_pretrained_cfg(register_model_config(model).replace("/", "-"), pretrained) or {}
    hub = config.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)  # open_clip's own split: "org/model/file.bin" or "org/model/"
        if not filename or filename == OPENCLIP_HUB_WEIGHTS[1]:
            names = list(OPENCLIP_HUB_WEIGHTS)
        elif filename.endswith((".bin", ".pth")):
            names = [filename[:-4] + ".safetensors", filename]
        else:
            names = [filename]
        cached = cached_hub_file(repo, names, cache_dir)
        return [*files, cached] if cached else files
    url = config.get("url", "")
    if url:
        candidate = Path(cache_dir or "~/.cache/clip").expanduser() / Path(url.split("?")[0]).name
        if candidate.is_file():
            files.append(candidate)
    return files


class OpenCLIPEncoder(VisionLanguageEncoder):
    """An open_clip vision-language model behind the usvl encoder interface.

    Args:
        model: open_clip model name, ``hf-hub:`` id, or path of an open_clip model-config JSON file.
        pretrained: Pretrained tag (``openai``, ``metaclip_fullcc``, ...) or a local checkpoint file.
        feature_taps: ViT block indices whose patch tokens become ``ImageFeatures.maps`` (reference: 3, 6, 9).
        normalization: ``model`` uses the model's own mean/std; ``none`` feeds [0, 1] pixels (the reference code's
            behaviour, kept as an option).
        cache_dir: Weights cache folder (default: the Hugging Face / open_clip cache).
        image_size: Override the model's input size (position embeddings are resized).
        allow_random: Allow random initialisation when no weights are named (tests only).
        model_config: Overrides merged recursively into the model's open_clip config, e.g.
            ``{"vision_cfg": {"layers": 2}}`` (a smaller random model of the same architecture, for tests).
    """

    def __init__(
        self,
        model: str,
        pretrained: str | None = None,
        feature_taps: Sequence[int] = (3, 6, 9),
        normalization: Literal["model", "none"] = "model",
        cache_dir: str | None = None,
        image_size: int | None = None,
        allow_random: bool = False,
        model_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = create_openclip_model(model, pretrained, cache_dir, image_size, allow_random, model_config)
        self._weights_source = (model, pretrained, cache_dir)
        self.tokenizer = openclip_tokenizer(register_model_config(model), int(self.model.context_length))
        self.feature_taps = tuple(feature_taps)
        visual = self.model.visual
        self.image_tower_path = "model.visual"
        if hasattr(visual, "trunk"):
            self._blocks_path, width = "model.visual.trunk.blocks", visual.trunk.embed_dim
            self.lora_targets = r"model\.visual\.trunk\.blocks\.\d+\.attn\.(?:qkv|proj)"
        elif hasattr(visual, "transformer"):
            self._blocks_path, width = "model.visual.transformer.resblocks", visual.transformer.width
            self.lora_targets = r"model\.visual\.transformer\.resblocks\.\d+\.attn"
        else:
            raise ValueError(f"open_clip model '{model}' has no ViT image tower usvl can adapt")
        self.num_prefix_tokens = vit_num_prefix_tokens(visual)
        self.width = width
        self.check_feature_taps()
        self.feature_dims = [width] * len(self.feature_taps)
        self.embed_dim = int(self.model.text_projection.shape[-1]) if hasattr(self.model, "text_projection") \
            and self.model.text_projection is not None else int(self.model.visual.output_dim)
        if normalization == "model":
            self.image_mean = tuple(getattr(visual, "image_mean", self.image_mean))
            self.image_std = tuple(getattr(visual, "image_std", self.image_std))
        else:
            self.image_mean, self.image_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.image_projection = identity_linear(self.embed_dim)
        self.text_projection = identity_linear(self.embed_dim)
        self.freeze_towers()
        self.train()
        overrides = f"|{json.dumps(model_config, sort_keys=True)}" if model_config else ""
        tag = hashlib.sha256(f"{model}|{pretrained}|{image_size}{overrides}".encode()).hexdigest()[:12]
        self.encoder_id = f"openclip/{model}@{tag}"

    @property
    def text_dim(self) -> int:
        """Width of CLIP's (projected) text embedding."""
        return self.embed_dim

    def _blocks(self) -> nn.Module:
        return self.get_submodule(self._blocks_path)

    @property
    def adapter_points(self) -> list[tuple[str, int]]:
        """After every ViT block of the image tower."""
        return [(f"{self._blocks_path}.{i}", self.width) for i in range(len(self._blocks()))]

    def frozen_modules(self) -> list[nn.Module]:
        """The whole open_clip model (both towers and CLIP's own projections)."""
        return [self.model]

    def weight_files(self) -> list[Path]:
        """The model-config JSON and checkpoint open_clip loaded (see :func:`openclip_weight_files`)."""
        return openclip_weight_files(*self._weights_source)

    def forward_image_tower(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's own ``encode_image``: CLIP's image embedding ``[B, embed_dim]``."""
        return self.model.encode_image(images)

    @torch.no_grad()
    def encode_text_raw(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings (frozen tower and projection) ``[N, embed_dim]``."""
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(list(texts)).to(device)).float()

    def project_text(self, raw: torch.Tensor) -> torch.Tensor:
        """Trainable map on top of CLIP's text space (identity at initialisation)."""
        return self.text_projection(raw)


@register_encoder_family("openclip/")
def openclip_encoder(model: str, **kwargs) -> OpenCLIPEncoder:
    """``openclip/<model name or hf-hub id>``."""
    return OpenCLIPEncoder(model, **kwargs)
