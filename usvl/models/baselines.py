"""Fully trained baselines: an smp U-Net and a timm classifier on the packaged ImageNet EfficientNet-Lite0.

Both plug into the ordinary tasks (``SegmentationTask``, ``ClassificationTask``) as an encoder plus a head, so they
share the adapter runs' data, splits, augmentation, metrics, checkpoints and prediction writers:

- :class:`TrainableEfficientNetLite0` is the image tower of the embedded encoder (the same packaged, sha256-checked
  ImageNet weights, loaded by :func:`~usvl.models.encoders.embedded.build_efficientnet_lite0`) with every weight
  trainable, batch-norm statistics updated, and no text tower.
- :class:`LinearClassifierHead` on it is timm's ``tf_efficientnet_lite0`` classifier (average pool, dropout,
  linear layer): the fully fine-tuned timm classifier.
- :class:`UNetDecoderHead` on it (taps at stages 0, 1, 2, 4, 6 and no head convolution) is
  ``segmentation_models_pytorch.Unet(encoder_name="tu-tf_efficientnet_lite0")``: the same encoder features, the
  same ``UnetDecoder`` and ``SegmentationHead``, the same initialisation.

Neither head uses class text (``uses_text = False``), so the tasks skip the class descriptions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from usvl.models.encoders.base import ImageFeatures, VisionLanguageEncoder
from usvl.models.encoders.embedded import (
    EFFICIENTNET_LITE0_HEAD_CHANNELS,
    EFFICIENTNET_LITE0_STAGE_CHANNELS,
    build_efficientnet_lite0,
)
from usvl.models.encoders.weights import EFFICIENTNET_LITE0

SMP_UNET_TAPS = (0, 1, 2, 4, 6)
"""The EfficientNet stages whose outputs smp's ``tu-tf_efficientnet_lite0`` encoder hands to the U-Net decoder
(strides 2, 4, 8, 16, 32)."""


class TrainableEfficientNetLite0(VisionLanguageEncoder):
    """The ImageNet EfficientNet-Lite0 image tower, trained end to end; an image-only encoder for baselines.

    ``ImageFeatures.maps`` are the outputs of the stages in ``feature_taps``; the global embedding is the average
    pooled last map (the head convolution's 1280 channels with ``head_conv``, else stage 6's 320), unprojected.
    Every parameter is trainable and the whole tower follows train/eval mode, as in ordinary training.

    Args:
        feature_taps: Indices of the EfficientNet stages (0-6) whose outputs become ``ImageFeatures.maps``.
        head_conv: Keep timm's 1x1 head convolution (classifier); ``False`` drops it, as smp's U-Net encoder does,
            so that every trainable weight is used by a segmentation head.
        pretrained: Load the packaged ImageNet weights (verified by sha256); ``False`` starts from random weights.
    """

    encoder_id = "baseline/efficientnet-lite0"
    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.5, 0.5, 0.5)

    def __init__(
        self,
        feature_taps: Sequence[int] = SMP_UNET_TAPS,
        head_conv: bool = True,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.feature_taps = tuple(feature_taps)
        self.check_feature_taps()
        self.image_tower = build_efficientnet_lite0(pretrained)
        if not head_conv:
            self.image_tower.conv_head = nn.Identity()
            self.image_tower.bn2 = nn.Identity()
        self.feature_dims = [EFFICIENTNET_LITE0_STAGE_CHANNELS[i] for i in self.feature_taps]
        self.embed_dim = EFFICIENTNET_LITE0_HEAD_CHANNELS if head_conv else EFFICIENTNET_LITE0_STAGE_CHANNELS[-1]
        self.image_projection = nn.Identity()
        weights = EFFICIENTNET_LITE0.sha256[:12] if pretrained else "random"
        self.encoder_id = f"{type(self).encoder_id}@{weights}"

    @property
    def adapter_points(self) -> list[tuple[str, int]]:
        """After each of the seven EfficientNet stages."""
        return [(f"image_tower.blocks.{i}", c) for i, c in enumerate(EFFICIENTNET_LITE0_STAGE_CHANNELS)]

    def forward_image_tower(self, images: torch.Tensor) -> torch.Tensor:
        """The tower's timm ``forward_features``: the last map ``[B, 1280 | 320, h, w]``."""
        return self.image_tower.forward_features(images)

    def pool_image(self, output: torch.Tensor, maps: list[torch.Tensor]) -> torch.Tensor:
        """Global average pooling of the last map, as timm's classifier does."""
        return output.mean(dim=(2, 3))

    def encode_text_raw(self, texts: Sequence[str]) -> torch.Tensor:
        """Not available: a baseline has no text tower.

        Raises:
            RuntimeError: Always; the message says to use a head without class text.
        """
        raise self._no_text_tower()

    def project_text(self, raw: torch.Tensor) -> torch.Tensor:
        """Not available: a baseline has no text tower.

        Raises:
            RuntimeError: Always; the message says to use a head without class text.
        """
        raise self._no_text_tower()

    def _no_text_tower(self) -> RuntimeError:
        return RuntimeError(f"{self.encoder_id} is an image-only baseline with no text tower: pair it with a head "
                            "that uses no class text (usvl.models.baselines.LinearClassifierHead or UNetDecoderHead)")


class LinearClassifierHead(nn.Module):
    """timm's EfficientNet classifier: dropout, then a linear layer on the pooled image features; no class text.

    Args:
        feature_dims: Channels of the tapped maps (unused; see :class:`~usvl.models.heads.HeadFactory`).
        embed_dim: Width of the pooled features (``encoder.embed_dim``).
        num_classes: Number of classes.
        dropout: Dropout before the linear layer (0.2 is EfficientNet-B0's training setting).

    The linear layer starts at zero (uniform class probabilities, loss ``log K``): timm's initialisation draws
    weights in ``±1/sqrt(K)``, which on the pretrained features gives logits of several units and a first loss
    several times ``log K``, undoing part of the pretraining in the first steps.
    """

    uses_text = False
    uses_maps = False

    def __init__(self, feature_dims: Sequence[int], embed_dim: int, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embed_dim, num_classes)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: ImageFeatures, class_text: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``[B, K]``; ``class_text`` is ignored."""
        return self.classifier(self.dropout(features.global_embedding))


class UNetDecoderHead(nn.Module):
    """smp's U-Net decoder and segmentation head over the encoder's tapped maps; no class text.

    With :class:`TrainableEfficientNetLite0` (taps 0, 1, 2, 4, 6, ``head_conv=False``) the task's model is
    ``segmentation_models_pytorch.Unet("tu-tf_efficientnet_lite0", decoder_channels=decoder_channels)``.

    Args:
        feature_dims: Channels of the tapped maps, shallow to deep; one map per decoder block.
        embed_dim: Width of the shared space (unused; see :class:`~usvl.models.heads.HeadFactory`).
        num_outputs: Logit channels per pixel.
        decoder_channels: Output channels of the decoder blocks, deep to shallow (smp's default).
        decoder_use_norm: Normalisation in the decoder blocks (smp's ``decoder_use_norm``).
        decoder_interpolation: Upsampling mode of the decoder (smp's ``decoder_interpolation``).

    Raises:
        ValueError: The number of tapped maps differs from the number of decoder blocks.
    """

    uses_text = False

    def __init__(
        self,
        feature_dims: Sequence[int],
        embed_dim: int,
        num_outputs: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        decoder_use_norm: str | bool = "batchnorm",
        decoder_interpolation: str = "nearest",
    ) -> None:
        super().__init__()
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.base.initialization import initialize_decoder, initialize_head
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

        if len(feature_dims) != len(decoder_channels):
            raise ValueError(f"UNetDecoderHead: {len(feature_dims)} tapped maps {list(feature_dims)} for "
                             f"{len(decoder_channels)} decoder blocks {list(decoder_channels)}; give one decoder "
                             "channel count per map (encoder feature_taps)")
        self.decoder = UnetDecoder(encoder_channels=[3, *feature_dims], decoder_channels=decoder_channels,
                                   n_blocks=len(decoder_channels), use_norm=decoder_use_norm,
                                   interpolation_mode=decoder_interpolation)
        self.segmentation_head = SegmentationHead(decoder_channels[-1], num_outputs, kernel_size=3)
        initialize_decoder(self.decoder)
        initialize_head(self.segmentation_head)

    def forward(self, features: ImageFeatures, text: torch.Tensor | None, output_size: Sequence[int]) -> torch.Tensor:
        """Logits ``[B, num_outputs, *output_size]``; ``text`` is ignored.

        smp's decoder reads only the size of its first input (the image itself in ``smp.Unet``), so an empty
        tensor of ``output_size`` stands in for it.
        """
        first = features.maps[0]
        placeholder = first.new_empty(first.shape[0], 0, *output_size)
        return self.segmentation_head(self.decoder([placeholder, *features.maps]))
