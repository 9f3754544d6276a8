"""The one interface every vision-language encoder implements."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from usvl.models.encoders.common import capture_outputs
from usvl.models.encoders.vit import tokens_to_map
from usvl.models.encoders.weights import files_fingerprint
from usvl.models.fold_batch_norm import fold_batch_norms

FOLD_VARIABLE = "USVL_FOLD_BATCH_NORMS"
"""``0`` keeps eval-mode batch norms apart from their convolutions (:mod:`usvl.models.fold_batch_norm`)."""

VIT_ATTENTION_LORA_TARGETS = r"image_tower\.(?:.+\.)?blocks\.\d+\.attn\.(?:qkv|proj)"
"""The fused ``attn.qkv`` and the ``attn.proj`` Linear layers of every block of a timm ViT image tower."""


@dataclass
class ImageFeatures:
    """What an image tower hands to heads.

    Attributes:
        global_embedding: Pooled image embedding projected into the shared image-text space, ``[B, D]``.
        maps: Multi-scale feature maps from the tapped layers, each ``[B, C_i, h_i, w_i]``, shallow to deep.
        pooled: Un-projected pooled features of the last tapped layer, ``[B, C_last]``.
    """

    global_embedding: torch.Tensor
    maps: list[torch.Tensor] = field(default_factory=list)
    pooled: torch.Tensor | None = None


class VisionLanguageEncoder(nn.Module, ABC):
    """A frozen image tower and text tower with trainable projections into one embedding space.

    Subclasses set ``embed_dim``, ``feature_dims``, ``feature_taps``, ``image_mean``/``image_std`` and
    ``encoder_id``, and implement :meth:`forward_image_tower`, :meth:`encode_text_raw`, :meth:`project_text` and
    :attr:`adapter_points`; they hold a trainable ``image_projection``.

    Feature taps: every backend taps features the same way. ``feature_taps`` index :attr:`adapter_points` (ViT
    blocks, CNN stages); :meth:`encode_image` puts forward hooks on those modules
    (:func:`~usvl.models.encoders.common.capture_outputs`), runs the tower's own forward
    (:meth:`forward_image_tower`), and turns each recorded output into a map (token sequences lose their
    ``num_prefix_tokens`` leading tokens and become square ``[B, C, h, w]`` maps; CNN maps pass through). An adapter
    injected at a point replaces the module there by ``AdaptedModule(module, adapter)``, so the tap sees the adapted
    output, and adapters need no knowledge of the encoder.
    """

    encoder_id: str = "abstract"
    _batch_norms_checked: bool = False
    """Whether :meth:`tower_features` has looked for batch norms to fold."""
    image_tower_path: str = "image_tower"
    """Qualified name of the image tower inside the encoder: the only place LoRA may adapt."""
    lora_targets: str | list[str] = VIT_ATTENTION_LORA_TARGETS
    """Layers LoRA adapts by default (regular expression on qualified names, or a list of names)."""
    embed_dim: int
    feature_dims: list[int]
    feature_taps: tuple[int, ...]
    num_prefix_tokens: int = 0
    """Leading non-patch tokens (CLS, registers) of token outputs; 0 for CNN towers."""
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @abstractmethod
    def forward_image_tower(self, images: torch.Tensor) -> torch.Tensor:
        """Run the (adapted) frozen image tower's own forward on a normalised batch ``[B, 3, H, W]``.

        Returns:
            Its final output: the pooled embedding of CLIP-style towers, the last feature map of CNNs.
        """

    def pool_image(self, output: torch.Tensor, maps: list[torch.Tensor]) -> torch.Tensor:
        """Pooled image features ``[B, C]`` from the tower's output and the tapped maps; default: the output."""
        return output

    def tapped_modules(self) -> list[nn.Module]:
        """The modules whose outputs become maps: the adapter points chosen by ``feature_taps`` (adapted if wrapped)."""
        points = self.adapter_points
        return [self.get_submodule(points[index][0]) for index in self.feature_taps]

    def check_feature_taps(self) -> None:
        """Check that every feature tap indexes an adapter point.

        Raises:
            ValueError: A tap is outside ``[0, len(adapter_points))``; the message says how many there are.
        """
        count = len(self.adapter_points)
        if any(not 0 <= index < count for index in self.feature_taps):
            raise ValueError(
                f"feature_taps {list(self.feature_taps)} must lie in [0, {count}): {type(self).__name__} has {count} "
                "tappable blocks/stages (its adapter points); pass taps in that range."
            )

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Encode a normalised image batch ``[B, 3, H, W]`` into :class:`ImageFeatures`, tapping the chosen points."""
        return self.project_image(*self.tower_features(images))

    def tower_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """What the image tower computes before the trainable image projection: pooled features and tapped maps.

        The first call folds the tower's eval-mode batch norms into their convolutions
        (:mod:`usvl.models.fold_batch_norm`: same outputs, one pass less over the activations per layer); set
        ``USVL_FOLD_BATCH_NORMS=0`` to keep them apart.

        Returns:
            The pooled features ``[B, C]`` (:meth:`pool_image`) and the tapped maps, shallow to deep.
        """
        if not self._batch_norms_checked and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            self._batch_norms_checked = True
            if os.environ.get(FOLD_VARIABLE, "1") != "0":
                fold_batch_norms(self, lambda: self.forward_image_tower(images[:2]))
        with capture_outputs(self.tapped_modules()) as tapped:
            output = self.forward_image_tower(images)
        maps = [tokens_to_map(feature, self.num_prefix_tokens) for feature in tapped]
        return self.pool_image(output, maps), maps

    def project_image(self, pooled: torch.Tensor, maps: Sequence[torch.Tensor] = ()) -> ImageFeatures:
        """:class:`ImageFeatures` from the tower's pooled features (and maps): the image projection applied."""
        return ImageFeatures(global_embedding=self.image_projection(pooled), maps=list(maps), pooled=pooled)

    @abstractmethod
    def encode_text_raw(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode texts with the frozen text tower, before the trainable projection: ``[N, D_text]``."""

    @abstractmethod
    def project_text(self, raw: torch.Tensor) -> torch.Tensor:
        """Map frozen text-tower embeddings ``[N, D_text]`` into the shared space ``[N, embed_dim]``."""

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode texts into the shared embedding space: ``[N, embed_dim]``."""
        return self.project_text(self.encode_text_raw(texts))

    @property
    @abstractmethod
    def adapter_points(self) -> list[tuple[str, int]]:
        """The modules after which adapters go, as ``(qualified module name, channels)`` pairs."""

    @property
    def text_dim(self) -> int:
        """Width of the frozen text tower's output."""
        raise NotImplementedError

    def freeze_towers(self) -> None:
        """Freeze every parameter except the trainable projections (named ``*_projection``)."""
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name.split(".")[0].endswith("_projection"))

    def train(self, mode: bool = True) -> VisionLanguageEncoder:
        """Switch mode, keeping frozen towers in eval so batch-norm statistics and dropout stay fixed.

        Modules flagged ``usvl_adapter`` (adapters, and batch norms whose statistics are adapted) follow ``mode``.
        """
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        for module in self.modules():
            if getattr(module, "usvl_adapter", False):
                module.train(mode)
        return self

    @property
    def unregistered_parameters(self) -> int:
        """Parameters of frozen parts held outside the module tree (e.g. a lazily loaded text tower), for counts."""
        return 0

    def frozen_modules(self) -> list[nn.Module]:
        """The frozen towers, kept in eval mode during training."""
        return []

    def weight_files(self) -> list[Path]:
        """The files the pretrained towers (and their tokenizer) were loaded from; empty for random towers.

        Backends override it; the default (no files) suits encoders whose ``encoder_id`` already pins every weight.
        """
        return []

    @property
    def weights_fingerprint(self) -> str:
        """A digest of the contents of :meth:`weight_files` (``"none"`` without files).

        Unlike ``encoder_id`` (which names the model and where its weights come from), it changes when a local
        checkpoint is replaced in place or the hub cache holds a new revision, so caches keyed on it (the class
        text embeddings) are rebuilt. Files are hashed once per process and file version (path, size, mtime).
        """
        return files_fingerprint(self.weight_files())

    def release_text_tower(self) -> bool:
        """Free the frozen text tower's memory when the backend can reload it on the next text encoding.

        Returns:
            Whether a loaded text tower was released. The default keeps it (the tower is part of one model file,
            e.g. open_clip and transformers CLIP, and is not reloaded separately).
        """
        return False
