"""Per-image intensity standardisation: the same grey levels whatever the scanner's gain and dynamic range.

A change of gain, dynamic range or log compression maps an image's grey levels through a monotone curve. Two
standardisations undo such a curve before the encoder sees the image, one image at a time (no training statistics,
so the same code runs in fit, test, predict and the ONNX graph):

- ``percentile``: the 1st-99th percentile of the image's field of view stretched to [0, 1] (clipped outside). It
  undoes an affine change (gain as an offset, dynamic range as a slope) and keeps the histogram's shape.
- ``equalise``: histogram equalisation; each grey level becomes the fraction of field-of-view pixels below it (the
  mid-rank of its 256-level bin). It undoes any monotone change, and flattens the histogram.

The field of view is every pixel above zero: the black outside a sector, the bars of a deep frame and the corners
that rotation pads in are left black and do not count.
"""

from __future__ import annotations

from typing import Literal

import torch

IntensityStandardisation = Literal["none", "percentile", "equalise"]
STANDARDISATIONS: tuple[str, ...] = ("none", "percentile", "equalise")
LEVELS = 256
"""Grey levels of the histogram (the images' own 8-bit depth)."""
PERCENTILES = (0.01, 0.99)


def check_standardisation(name: str) -> str:
    """Return ``name`` when it is a known standardisation.

    Raises:
        ValueError: Any other name; the message lists the known ones.
    """
    if name not in STANDARDISATIONS:
        raise ValueError(f"intensity_standardisation must be one of {', '.join(STANDARDISATIONS)}, got {name!r}")
    return name


def _histogram(levels: torch.Tensor, inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image cumulative fraction of field-of-view pixels at or below each level, and each level's own count.

    Args:
        levels: Integer grey levels ``[N, P]`` in ``[0, LEVELS)``.
        inside: Field-of-view weights ``[N, P]`` (1 inside, 0 outside).

    Returns:
        ``(cumulative, counts)``, both ``[N, LEVELS]``, as fractions of each image's field of view.
    """
    counts = torch.zeros(levels.shape[0], LEVELS, dtype=inside.dtype, device=levels.device)
    counts = counts.scatter_add(1, levels, inside)
    counts = counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)
    return counts.cumsum(dim=1), counts


def standardise_intensity(images: torch.Tensor, method: str) -> torch.Tensor:
    """Standardise each image (and channel) of a batch in [0, 1]; ``none`` returns it unchanged.

    Args:
        images: Float images ``[B, C, H, W]`` in [0, 1].
        method: ``none``, ``percentile`` or ``equalise`` (see the module docstring).

    Returns:
        The standardised images, same shape, in [0, 1]; pixels outside the field of view (zero) stay zero.
    """
    if check_standardisation(method) == "none":
        return images
    flat = images.flatten(2).flatten(0, 1)
    levels = (flat * (LEVELS - 1)).round().clamp(0, LEVELS - 1).long()
    inside = (levels > 0).to(flat.dtype)
    cumulative, counts = _histogram(levels, inside)
    if method == "equalise":
        mid_rank = cumulative - counts / 2
        result = mid_rank.gather(1, levels)
    else:
        grid = torch.arange(LEVELS, device=flat.device, dtype=flat.dtype) / (LEVELS - 1)
        low, high = (grid[(cumulative < fraction).sum(dim=1, keepdim=True).clamp(max=LEVELS - 1)]
                     for fraction in PERCENTILES)
        result = ((flat - low) / (high - low).clamp_min(1.0 / (LEVELS - 1))).clamp(0, 1)
    return (result * inside).view_as(images)
