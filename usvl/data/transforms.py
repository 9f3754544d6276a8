"""Batched image + mask augmentation on the training device (decoding lives in :mod:`usvl.data.decode`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchAugment(nn.Module):
    """Random per-sample geometric and intensity augmentation of a batch, applied on the training device.

    Geometry (flip, rotation, scale, translation) is shared by image and mask; intensity (gain, contrast, gamma)
    touches the image only. Runs on whole batches, so it costs little on a CPU.

    Args:
        flip: Probability of a horizontal (lateral) flip.
        rotation_degrees: Maximum absolute rotation.
        scale: ``(min, max)`` zoom factor.
        translate: Maximum shift as a fraction of the image size.
        brightness: Maximum additive gain, as a fraction of full scale.
        contrast: Maximum relative contrast change.
        gamma: Maximum relative gamma change.
    """

    def __init__(
        self,
        flip: float = 0.5,
        rotation_degrees: float = 10.0,
        scale: tuple[float, float] = (0.9, 1.1),
        translate: float = 0.05,
        brightness: float = 0.1,
        contrast: float = 0.2,
        gamma: float = 0.2,
    ) -> None:
        super().__init__()
        self.flip = flip
        self.rotation_degrees = rotation_degrees
        self.scale = tuple(scale)
        self.translate = translate
        self.brightness = brightness
        self.contrast = contrast
        self.gamma = gamma

    def _affine_grid(self, batch: int, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.empty(batch, device=device).uniform_(low, high)

        angle = uniform(-1.0, 1.0) * math.radians(self.rotation_degrees)
        zoom = uniform(*self.scale)
        flip = torch.where(torch.rand(batch, device=device) < self.flip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.zeros(batch, 2, 3, device=device)
        theta[:, 0, 0] = cos * flip
        theta[:, 0, 1] = -sin
        theta[:, 1, 0] = sin * flip
        theta[:, 1, 1] = cos
        theta[:, :, 2] = (torch.rand(batch, 2, device=device) * 2 - 1) * 2 * self.translate
        return F.affine_grid(theta, (batch, 1, *size), align_corners=False)

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None):
        """Augment ``image`` (``[B, C, H, W]``, 0–255) and, with the same geometry, ``mask``.

        Returns:
            The augmented float image (0–255) and the augmented mask (or ``None``).
        """
        batch = image.shape[0]
        grid = self._affine_grid(batch, tuple(image.shape[-2:]), image.device)
        x = F.grid_sample(image.float() / 255.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        shape = (batch, 1, 1, 1)
        gamma = 1.0 + (torch.rand(shape, device=x.device) * 2 - 1) * self.gamma
        x = x.clamp(0, 1).pow(gamma)
        contrast = 1.0 + (torch.rand(shape, device=x.device) * 2 - 1) * self.contrast
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        x = x + (torch.rand(shape, device=x.device) * 2 - 1) * self.brightness
        x = x.clamp(0, 1) * 255.0
        if mask is not None:
            mask = F.grid_sample(mask.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
            mask = mask.to(torch.uint8)
        return x, mask
