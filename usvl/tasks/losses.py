"""Training losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiceCELoss"]


class DiceCELoss(nn.Module):
    """Binary segmentation loss: ``dice_weight * soft Dice loss + ce_weight * BCE-with-logits``.

    Both terms are computed in float32 from one-channel logits ``[B, 1, H, W]`` and a 0/1 target of the same shape.

    * The cross-entropy is the mean binary cross-entropy over all pixels of the batch.
    * The soft Dice loss is computed per image and then averaged over the batch (MONAI ``batch=False``, as in the
      reference code): with ``p = sigmoid(logits)`` and target ``t``,
      ``dice = (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)`` and the loss is ``1 - dice``.

    Empty ground truth (normal images): the intersection is 0, so the Dice loss of such an image is
    ``sum(p) / (sum(p) + smooth)``. It is 0 only when the predicted soft area vanishes, is 0.5 for a predicted area
    of ``smooth`` pixels and approaches 1 for larger false-positive areas. Its gradient fades once the false-positive
    area is large (``smooth / (sum(p) + smooth)^2``); there the BCE term, which is well-behaved on empty masks,
    carries the signal. With ``smooth=1`` the smoothing barely changes the Dice of images with lesions (hundreds of
    pixels at 224 px). The reference used MONAI with ``smooth=1e-8`` and a softmax over two channels including the
    background, where an empty foreground gives a Dice loss of about 1 for any non-zero prediction and the
    background channel dilutes the lesion channel.

    Args:
        dice_weight: Weight of the soft Dice term.
        ce_weight: Weight of the binary cross-entropy term.
        smooth: Additive smoothing of the Dice numerator and denominator, in pixels; must be positive so that
            images with an empty ground truth and an empty prediction get a Dice of 1 (loss 0).
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        if smooth <= 0:
            raise ValueError(f"smooth must be positive (empty masks divide by it), got {smooth}")
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(f"Weights must be non-negative and not both zero, got {dice_weight}, {ce_weight}")
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.smooth = smooth

    @staticmethod
    def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.ndim != 4 or logits.shape[1] != 1:
            raise ValueError(f"Expected one-channel logits [B, 1, H, W], got {tuple(logits.shape)}")
        if target.shape != logits.shape:
            raise ValueError(f"Target shape {tuple(target.shape)} differs from logits {tuple(logits.shape)}")

    def dice_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-image soft Dice loss ``[B]`` (see the class docstring for empty masks)."""
        self._check(logits, target)
        probabilities = torch.sigmoid(logits.float()).flatten(1)
        target = target.float().flatten(1)
        intersection = (probabilities * target).sum(1)
        total = probabilities.sum(1) + target.sum(1)
        return 1.0 - (2.0 * intersection + self.smooth) / (total + self.smooth)

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms: ``dice`` (mean per-image soft Dice loss) and ``ce`` (mean pixel BCE)."""
        self._check(logits, target)
        dice = self.dice_loss(logits, target).mean()
        ce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return {"dice": dice, "ce": ce}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the soft Dice and BCE terms, a scalar.

        Args:
            logits: One-channel lesion logits ``[B, 1, H, W]``.
            target: Ground-truth mask ``[B, 1, H, W]``, 0/1 of any dtype.
        """
        terms = self.terms(logits, target)
        return self.dice_weight * terms["dice"] + self.ce_weight * terms["ce"]
