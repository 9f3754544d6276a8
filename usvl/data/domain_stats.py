"""Training-domain statistics of images, and how many new images fall outside them (a simple shift score).

Each image is summarised by four numbers computed on its grey levels at the model's input size: the mean (gain),
the standard deviation (dynamic range, contrast), and the correlation of neighbouring pixels along a row
(lateral) and along a column (axial), which measure the speckle grain against the pixel size (probe frequency,
bandwidth, F-number, compounding, smoothing, depth). The training split's percentiles of each number form a box;
an image with any number outside the box is out of the training range. The fraction of such images is reported as
a warning about the acquisition, never used to refuse an input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

FEATURES = ("mean", "std", "lateral_correlation", "axial_correlation")
"""The per-image statistics, in column order."""


def image_statistics(images: torch.Tensor) -> torch.Tensor:
    """Per-image statistics ``[B, 4]`` (float64, columns :data:`FEATURES`) of images ``[B, C, H, W]`` in 0-255.

    Channels are averaged to grey first. A flat image has correlations 0.
    """
    grey = images.double().mean(dim=1)
    mean = grey.mean(dim=(1, 2))
    centred = grey - mean[:, None, None]
    variance = centred.pow(2).mean(dim=(1, 2))
    scale = variance.clamp_min(1e-9)
    lateral = (centred[:, :, 1:] * centred[:, :, :-1]).mean(dim=(1, 2)) / scale
    axial = (centred[:, 1:, :] * centred[:, :-1, :]).mean(dim=(1, 2)) / scale
    flat = variance <= 1e-9
    lateral, axial = lateral.masked_fill(flat, 0.0), axial.masked_fill(flat, 0.0)
    return torch.stack([mean, variance.sqrt(), lateral, axial], dim=1)


def statistics_in_chunks(images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """:func:`image_statistics` of many images, ``chunk`` at a time (bounded memory)."""
    parts = [image_statistics(images[start:start + chunk]) for start in range(0, len(images), chunk)]
    return torch.cat(parts) if parts else torch.empty(0, len(FEATURES), dtype=torch.float64)


@dataclass(frozen=True)
class DomainRange:
    """The box of training-domain statistics.

    Attributes:
        features: Names of the statistics (:data:`FEATURES`).
        low: Lower percentile of each statistic on the training images.
        high: Upper percentile of each statistic.
        percentiles: The two percentiles (e.g. 1 and 99).
        images: Training images the box was computed from.
        train_outside: Fraction of the training images themselves outside the box (what in-domain data gives).
    """

    features: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    percentiles: tuple[float, float]
    images: int
    train_outside: float

    def outside(self, statistics: torch.Tensor) -> torch.Tensor:
        """``bool [B]``: which images have a statistic outside the box."""
        low = torch.tensor(self.low, dtype=statistics.dtype, device=statistics.device)
        high = torch.tensor(self.high, dtype=statistics.dtype, device=statistics.device)
        return ((statistics < low) | (statistics > high)).any(dim=1)

    def to_record(self) -> dict:
        """A JSON-able dict (stored in checkpoints as ``checkpoint["usvl"]["domain"]``)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_record(cls, record: dict) -> DomainRange:
        """The range stored by :meth:`to_record`."""
        return cls(tuple(record["features"]), tuple(float(v) for v in record["low"]),
                   tuple(float(v) for v in record["high"]), tuple(record["percentiles"]), int(record["images"]),
                   float(record["train_outside"]))


def fit_domain_range(statistics: torch.Tensor, percentiles: tuple[float, float] = (1.0, 99.0)) -> DomainRange:
    """The box between two percentiles of each training statistic.

    Args:
        statistics: ``[N, 4]`` from :func:`image_statistics` of the training images.
        percentiles: Lower and upper percentile, in (0, 100).

    Raises:
        ValueError: No statistics, or percentiles not ordered within [0, 100].
    """
    if statistics.ndim != 2 or len(statistics) == 0:
        raise ValueError("fit_domain_range needs the statistics of at least one training image")
    low_p, high_p = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= low_p < high_p <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    values = statistics.double()
    low = torch.quantile(values, low_p / 100.0, dim=0)
    high = torch.quantile(values, high_p / 100.0, dim=0)
    box = DomainRange(FEATURES, tuple(low.tolist()), tuple(high.tolist()), (low_p, high_p), len(values), 0.0)
    train_outside = float(box.outside(values).double().mean())
    return DomainRange(FEATURES, box.low, box.high, box.percentiles, box.images, round(train_outside, 6))
