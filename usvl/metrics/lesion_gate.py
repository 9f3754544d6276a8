"""The lesion gate of segmentation: an image-level operating point chosen on the validation split.

A segmentation model thresholds each pixel's lesion probability (0.5). On images without a lesion (normal breast
images) that pixel rule alone leaves a false lesion wherever a few hundred pixels pass it, and under an acquisition
shift it does so on many normal images (BENCHMARKS.md, "Robust to the scanner"). The gate adds one image-level
decision: an image keeps its predicted mask only if the mask's *lesion confidence* — the mean probability over its
predicted pixels — reaches a threshold; otherwise the image is predicted empty. The threshold is chosen on the
validation split after fit, as the one that maximises the mean per-image Dice there (an empty prediction on an
image without a lesion scores 1, a false lesion 0, as in :class:`~usvl.metrics.SegmentationMetrics`), so it trades
false lesions on normal images against missed lesions by the data, and is 0 (no gating) where gating only loses.
"""

from __future__ import annotations

from typing import Any

import torch

STATISTIC = "mean_lesion_probability"
"""The gate's statistic: the mean lesion probability over the pixels predicted as lesion (0 when there are none)."""


def lesion_confidence(probability: torch.Tensor, threshold: float) -> torch.Tensor:
    """Each image's lesion confidence: the mean probability over its pixels above ``threshold`` (0 without any).

    Args:
        probability: Lesion probabilities ``[B, 1, H, W]`` or ``[B, H, W]``.
        threshold: The pixel threshold of the predicted mask.

    Returns:
        ``[B]`` float confidences in [0, 1].
    """
    flat = probability.detach().float().flatten(1)
    predicted = flat > threshold
    count = predicted.sum(dim=1)
    return torch.where(count > 0, (flat * predicted).sum(dim=1) / count.clamp_min(1), torch.zeros_like(flat[:, 0]))


def image_dice(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image Dice of boolean masks ``[B, ...]``; 1 when both are empty, 0 when only one is."""
    predicted, target = predicted.flatten(1).bool(), target.flatten(1).bool()
    overlap = (predicted & target).sum(dim=1).float()
    total = (predicted.sum(dim=1) + target.sum(dim=1)).float()
    return torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total))


def fit_lesion_gate(confidence: torch.Tensor, dice: torch.Tensor, empty_truth: torch.Tensor) -> dict[str, Any]:
    """Choose the gate threshold that maximises the mean per-image Dice of the validation images.

    An image whose confidence is below the threshold is predicted empty: it then scores 1 if it has no lesion and
    0 if it has one. Candidates are 0 (no gating) and every validation confidence; ties go to the lowest threshold.

    Args:
        confidence: ``[N]`` lesion confidences (:func:`lesion_confidence`) of the validation images.
        dice: ``[N]`` their per-image Dice without the gate (:func:`image_dice`).
        empty_truth: ``[N]`` bool, True for images without a lesion.

    Returns:
        The record stored in checkpoints: ``statistic``, ``threshold``, ``validation_images`` and ``validation``
        (mean Dice and false-lesion rate on images without a lesion, without and with the gate, and the number of
        lesion images the gate empties).

    Raises:
        ValueError: The inputs are empty or of different lengths.
    """
    confidence, dice, empty_truth = confidence.double(), dice.double(), empty_truth.bool()
    if confidence.numel() == 0 or not confidence.shape == dice.shape == empty_truth.shape:
        raise ValueError(f"fit_lesion_gate needs equal, non-empty [N] inputs, got {tuple(confidence.shape)}, "
                         f"{tuple(dice.shape)}, {tuple(empty_truth.shape)}")
    candidates = torch.unique(torch.cat([confidence.new_zeros(1), confidence]))
    gated_score = empty_truth.double()
    scores = torch.stack([torch.where(confidence >= t, dice, gated_score).mean() for t in candidates])
    threshold = float(candidates[int(torch.argmax(scores))])  # argmax takes the first, i.e. lowest, maximum
    kept = confidence >= threshold
    false_lesion = (dice < 1) & empty_truth
    normals = int(empty_truth.sum())
    return {
        "statistic": STATISTIC,
        "threshold": threshold,
        "validation_images": int(confidence.numel()),
        "validation": {
            "dice": float(dice.mean()),
            "dice_gated": float(torch.where(kept, dice, gated_score).mean()),
            "fp_rate_normal": float(false_lesion.sum()) / normals if normals else None,
            "fp_rate_normal_gated": float((false_lesion & kept).sum()) / normals if normals else None,
            "lesions_gated": int((~kept & ~empty_truth).sum()),
        },
    }


def apply_lesion_gate(masks: torch.Tensor, probability: torch.Tensor, pixel_threshold: float,
                      gate_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty the masks of images whose lesion confidence is below ``gate_threshold``.

    Args:
        masks: Boolean masks ``[B, ...]`` (the probabilities above ``pixel_threshold``).
        probability: The lesion probabilities they came from, same shape.
        pixel_threshold: The pixel threshold of ``masks``.
        gate_threshold: The stored gate threshold.

    Returns:
        The gated masks and a ``[B]`` bool tensor of the images the gate emptied (those that had a predicted pixel).
    """
    confidence = lesion_confidence(probability, pixel_threshold)
    gated = (confidence < gate_threshold) & masks.flatten(1).any(dim=1)
    keep = (~gated).view(-1, *([1] * (masks.dim() - 1)))
    return masks & keep, gated
