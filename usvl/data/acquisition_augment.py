"""Acquisition augmentation: batched, per-sample changes of how an ultrasound image was acquired and displayed.

A B-mode image is a log-compressed echo amplitude: a grey level ``g`` in [0, 1] is about ``(dB - floor) / DR``. The
intensity transforms act in that display domain, where the scanner's controls are simple: gain adds a constant,
a time-gain-compensation (TGC) curve adds a function of depth (image rows), a wider or narrower dynamic range
scales the grey levels about the tissue level, multiplicative speckle adds the log of a Rayleigh amplitude field,
an acoustic shadow subtracts a band below some depth. A point-spread function blurs axially (rows) and laterally
(columns) by different amounts. The geometric transforms (depth crop and zoom about the probe face, sector or
linear field-of-view masks) move the mask with the image; the intensity transforms leave the mask alone.

Black areas (4 x 4 blocks without a lit pixel, faded over a few pixels) stay black under the intensity
transforms: outside a sector or beside a linear field nothing was imaged, and black tissue lay below the display
floor, where a few dB more gain or range would still show (almost) nothing; isolated black speckle pixels change
with their neighbours. Every parameter is drawn per image from the global torch generator on the batch's device,
like :class:`~usvl.data.transforms.BatchAugment`, so runs are reproducible under ``seed_everything`` whatever the
number of loader workers.

The depth attenuation, Gaussian shadow and haze transforms of the ``usaugment`` package (MIT; Tupper et al.,
"Revisiting Data Augmentation for Ultrasound Images", arXiv 2501.13193, after Ostvik et al. 2021 and Smistad et al.
2018) are covered here by the TGC curve, the acoustic shadow and :attr:`AcquisitionAugment.p_haze`, batched in
torch (the package works one numpy image at a time and pulls in albumentations, OpenCV and scikit-image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Range = tuple[float, float]


def _uniform(batch: int, bounds: Range, device: torch.device) -> torch.Tensor:
    """``batch`` draws from U(bounds) (float32)."""
    low, high = float(bounds[0]), float(bounds[1])
    return torch.rand(batch, device=device) * (high - low) + low


def gaussian_matrices(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Row-normalised Gaussian smoothing matrices ``[B, size, size]``; a sigma of (almost) zero gives the identity.

    Multiplying by a banded matrix is the fastest per-image blur on a CPU (one batched matrix product; a grouped
    convolution with a kernel per image is several times slower).
    """
    positions = torch.arange(size, device=sigma.device, dtype=torch.float32)
    offsets = positions[None, :, None] - positions[None, None, :]
    weights = torch.exp(-0.5 * (offsets / sigma.clamp_min(1e-3)[:, None, None]) ** 2)
    return weights / weights.sum(dim=2, keepdim=True)


def separable_blur(x: torch.Tensor, sigma_rows: torch.Tensor, sigma_cols: torch.Tensor) -> torch.Tensor:
    """Blur every image ``[B, C, H, W]`` with its own Gaussian: ``sigma_rows`` along H, ``sigma_cols`` along W."""
    rows = gaussian_matrices(sigma_rows, x.shape[-2])[:, None]
    cols = gaussian_matrices(sigma_cols, x.shape[-1])[:, None]
    return rows @ x @ cols.transpose(-1, -2)


class AcquisitionAugment(nn.Module):
    """Random per-image acquisition changes of a batch: image and mask together, on the training device.

    Each transform is applied to an image with its probability ``p_<name>``, with parameters drawn uniformly from
    its range; a probability of 0 turns it off. Order: TGC, gain, dynamic range, speckle, blur, shadow, haze (image
    only), then zoom and field of view (image and mask).

    Args:
        p_tgc: Probability of a random TGC curve.
        tgc: Largest offset of each TGC knot, in display units (fraction of the dynamic range).
        tgc_knots: Knots of the TGC curve, evenly spaced from the top to the bottom row (linear in between).
        p_gain: Probability of a gain change.
        gain: Range of the additive gain, in display units.
        p_dynamic_range: Probability of a dynamic-range change.
        dynamic_range: Range of the factor on the dynamic range (>1 wider: flatter picture; <1 narrower: harsher,
            more clipping); grey levels are scaled by its inverse about the image's mean tissue level.
        p_speckle: Probability of extra multiplicative speckle.
        speckle_grain: Range of the speckle grain's axial (row) Gaussian sigma in pixels.
        speckle_aspect: Range of the grain's lateral-to-axial size ratio (lateral beams are wider than pulses).
        speckle_strength: Range of the exponent on the Rayleigh amplitude field (1: fully developed speckle; less:
            sub-Rayleigh, Nakagami-like contrast).
        p_blur: Probability of a point-spread blur.
        blur_axial: Range of the blur sigma along rows (axial), in pixels.
        blur_lateral: Range of the blur sigma along columns (lateral), in pixels.
        p_shadow: Probability of an acoustic shadow (a band darkened from a random depth to the bottom).
        shadow_strength: Range of the darkening, in display units.
        shadow_width: Range of the band's half width, as a fraction of the image width.
        p_haze: Probability of near-field clutter haze (an arc of random bright noise about the probe face).
        haze_strength: Range of the haze brightness, in display units.
        p_zoom: Probability of a depth crop and zoom about the top centre (the probe face).
        zoom: Range of the zoom factor (>1 crops the deep field and enlarges; <1 shrinks the image into a larger
            black frame, as a deeper acquisition would).
        aspect: Range of the lateral-to-axial pixel aspect change.
        p_sector: Probability of a sector (convex-probe) field-of-view mask.
        sector_half_angle: Range of the sector's half opening angle in degrees.
        sector_radius: Range of the convex probe face's radius of curvature, as a fraction of the imaging depth
            (the fan is drawn in its bounding box, resized to the image).
        p_bars: Probability of a linear field-of-view mask (black columns on both sides).
        bars: Range of each bar's width as a fraction of the image width.
        display_db: The dynamic range (dB) the display domain stands for; scales the speckle's log amplitude.
    """

    def __init__(
        self,
        p_tgc: float = 0.5,
        tgc: float = 0.12,
        tgc_knots: int = 5,
        p_gain: float = 0.5,
        gain: Range = (-0.15, 0.15),
        p_dynamic_range: float = 0.5,
        dynamic_range: Range = (0.7, 1.4),
        p_speckle: float = 0.4,
        speckle_grain: Range = (0.5, 1.5),
        speckle_aspect: Range = (1.0, 2.0),
        speckle_strength: Range = (0.2, 0.7),
        p_blur: float = 0.4,
        blur_axial: Range = (0.0, 1.5),
        blur_lateral: Range = (0.0, 2.5),
        p_shadow: float = 0.2,
        shadow_strength: Range = (0.15, 0.5),
        shadow_width: Range = (0.03, 0.12),
        p_haze: float = 0.1,
        haze_strength: Range = (0.05, 0.25),
        p_zoom: float = 0.4,
        zoom: Range = (0.75, 1.2),
        aspect: Range = (0.9, 1.1),
        p_sector: float = 0.1,
        sector_half_angle: Range = (30.0, 50.0),
        sector_radius: Range = (0.2, 1.0),
        p_bars: float = 0.1,
        bars: Range = (0.04, 0.15),
        display_db: float = 55.0,
    ) -> None:
        super().__init__()
        probabilities = {"p_tgc": p_tgc, "p_gain": p_gain, "p_dynamic_range": p_dynamic_range,
                         "p_speckle": p_speckle, "p_blur": p_blur, "p_shadow": p_shadow, "p_haze": p_haze,
                         "p_zoom": p_zoom, "p_sector": p_sector, "p_bars": p_bars}
        bad = {k: v for k, v in probabilities.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"probabilities must lie in [0, 1]: {bad}")
        if tgc_knots < 2:
            raise ValueError(f"tgc_knots must be at least 2, got {tgc_knots}")
        if min(*dynamic_range, *zoom, *aspect) <= 0:
            raise ValueError("dynamic_range, zoom and aspect must be positive")
        for name, value in probabilities.items():
            setattr(self, name, float(value))
        self.tgc, self.tgc_knots, self.gain, self.dynamic_range = float(tgc), int(tgc_knots), gain, dynamic_range
        self.speckle_grain, self.speckle_aspect, self.speckle_strength = speckle_grain, speckle_aspect, speckle_strength
        self.blur_axial, self.blur_lateral = blur_axial, blur_lateral
        self.shadow_strength, self.shadow_width, self.haze_strength = shadow_strength, shadow_width, haze_strength
        self.zoom, self.aspect, self.sector_half_angle, self.bars = zoom, aspect, sector_half_angle, bars
        self.sector_radius = sector_radius
        self.display_db = float(display_db)

    def _chosen(self, batch: int, probability: float, device: torch.device) -> torch.Tensor:
        """Per-image 0/1 (float) of whether a transform applies."""
        return (torch.rand(batch, device=device) < probability).float()

    def intensity(self, x: torch.Tensor) -> torch.Tensor:
        """The image-only transforms on display-domain images ``[B, C, H, W]`` in [0, 1]."""
        batch, channels, height, width = x.shape
        device = x.device
        view = (batch, 1, 1, 1)
        original = x
        lit = (F.max_pool2d(x.amax(dim=1, keepdim=True), 4, stride=4, ceil_mode=True) > 0).float()
        keep = F.interpolate(lit, size=(height, width), mode="bilinear", align_corners=False)
        rows = torch.linspace(0.0, 1.0, height, device=device).view(1, 1, height, 1)
        cols = torch.linspace(0.0, 1.0, width, device=device).view(1, 1, 1, width)
        knots = (torch.rand(batch, 1, self.tgc_knots, device=device) * 2 - 1) * self.tgc
        curve = F.interpolate(knots, size=height, mode="linear", align_corners=True).view(batch, 1, height, 1)
        x = x + curve * self._chosen(batch, self.p_tgc, device).view(view)
        x = x + (_uniform(batch, self.gain, device) * self._chosen(batch, self.p_gain, device)).view(view)
        scale = 1.0 / _uniform(batch, self.dynamic_range, device)
        scale = torch.where(self._chosen(batch, self.p_dynamic_range, device) > 0, scale, torch.ones_like(scale))
        weight = (original > 0).float()
        level = (x * weight).sum(dim=(1, 2, 3), keepdim=True) / weight.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
        x = (x - level) * scale.view(view) + level
        speckle = self._chosen(batch, self.p_speckle, device).nonzero()[:, 0]
        if len(speckle):
            x = x.index_add(0, speckle, self._speckle(len(speckle), height, width, device).expand(-1, channels, -1, -1))
        blur = self._chosen(batch, self.p_blur, device).nonzero()[:, 0]
        if len(blur):
            sigma_rows = _uniform(len(blur), self.blur_axial, device)
            sigma_cols = _uniform(len(blur), self.blur_lateral, device)
            x = x.index_copy(0, blur, separable_blur(x[blur], sigma_rows, sigma_cols))
        shadow = self._chosen(batch, self.p_shadow, device).nonzero()[:, 0]
        if len(shadow):
            x = x.index_add(0, shadow, -self._shadow(len(shadow), rows, cols).expand(-1, channels, -1, -1))
        haze = self._chosen(batch, self.p_haze, device).nonzero()[:, 0]
        if len(haze):
            x = x.index_add(0, haze, self._haze(len(haze), rows, cols, height, width).expand(-1, channels, -1, -1))
        return (original + (x - original) * keep).clamp(0.0, 1.0)

    def _speckle(self, count: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Log of a Rayleigh amplitude field with anisotropic grain, zero-mean, in display units, ``[N, 1, H, W]``.

        The complex field is drawn and smoothed at half the resolution (a quarter of the cost) and its log amplitude
        resized bilinearly, which adds about half a pixel to the grain.
        """
        half = (max(1, height // 2), max(1, width // 2))
        field = torch.randn(count, 2, *half, device=device)
        grain_rows = _uniform(count, self.speckle_grain, device)
        grain_cols = grain_rows * _uniform(count, self.speckle_aspect, device)
        field = separable_blur(field, grain_rows / 2.0, grain_cols / 2.0)
        log_amplitude = 10.0 * torch.log10(field.pow(2).sum(dim=1, keepdim=True) + 1e-12)
        log_amplitude = F.interpolate(log_amplitude, size=(height, width), mode="bilinear", align_corners=False)
        log_amplitude = log_amplitude - log_amplitude.mean(dim=(2, 3), keepdim=True)
        strength = _uniform(count, self.speckle_strength, device).view(count, 1, 1, 1)
        return strength * log_amplitude / self.display_db

    def _shadow(self, batch: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """A soft-edged band below a random depth, ``[B, 1, H, W]`` in display units."""
        device = rows.device
        centre = _uniform(batch, (0.1, 0.9), device).view(batch, 1, 1, 1)
        half = _uniform(batch, self.shadow_width, device).view(batch, 1, 1, 1)
        start = _uniform(batch, (0.15, 0.8), device).view(batch, 1, 1, 1)
        strength = _uniform(batch, self.shadow_strength, device).view(batch, 1, 1, 1)
        lateral = torch.sigmoid((half - (cols - centre).abs()) / (0.2 * half))
        axial = torch.sigmoid((rows - start) / 0.02)
        return strength * lateral * axial

    def _haze(self, batch: int, rows: torch.Tensor, cols: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Random bright noise on an arc about the top centre (usaugment's haze artefact), in display units."""
        device = rows.device
        radius = torch.sqrt((cols - 0.5) ** 2 + rows**2)
        centre = _uniform(batch, (0.05, 0.6), device).view(batch, 1, 1, 1)
        spread = _uniform(batch, (0.02, 0.1), device).view(batch, 1, 1, 1)
        strength = _uniform(batch, self.haze_strength, device).view(batch, 1, 1, 1)
        noise = torch.rand(batch, 1, height, width, device=device)
        return strength * noise * torch.exp(-((radius - centre) ** 2) / (2 * spread**2))

    def zoom_grid(self, count: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Sampling grids ``[N, H, W, 2]`` of random depth crops and zooms about the top centre (the probe face)."""
        zoom = _uniform(count, self.zoom, device)
        aspect = _uniform(count, self.aspect, device)
        scale_x, scale_y = zoom * aspect.sqrt(), zoom / aspect.sqrt()
        theta = torch.zeros(count, 2, 3, device=device)
        theta[:, 0, 0] = 1.0 / scale_x
        theta[:, 1, 1] = 1.0 / scale_y
        theta[:, 1, 2] = 1.0 / scale_y - 1.0  # the top row stays at the top
        return F.affine_grid(theta, (count, 1, height, width), align_corners=False)

    def field_masks(self, batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Field-of-view masks ``[B, 1, H, W]`` (0/1): a sector fan, black bars beside a linear field, or neither."""
        sector = self._chosen(batch, self.p_sector, device).nonzero()[:, 0]
        bars = self._chosen(batch, self.p_bars, device).nonzero()[:, 0]
        field = torch.ones(batch, 1, height, width, device=device)
        x = torch.linspace(-1.0, 1.0, width, device=device).view(1, 1, 1, width)
        y = torch.linspace(-1.0, 1.0, height, device=device).view(1, 1, height, 1)
        if len(sector):
            # a convex probe's fan (face radius R, depth 1, half angle phi) resized from its bounding box to the frame
            half_angle = torch.deg2rad(_uniform(len(sector), self.sector_half_angle, device)).view(-1, 1, 1, 1)
            radius = _uniform(len(sector), self.sector_radius, device).view(-1, 1, 1, 1)
            outer = radius + 1.0
            top = radius * torch.cos(half_angle)
            across = x * outer * torch.sin(half_angle)
            down = top + (y + 1.0) * (outer - top) / 2.0
            distance = torch.sqrt(across**2 + down**2)
            inside = (torch.atan2(across.abs(), down) <= half_angle) & (distance >= radius) & (distance <= outer)
            field[sector] = field[sector] * inside.float()
        if len(bars):
            width_fraction = _uniform(len(bars), self.bars, device).view(-1, 1, 1, 1) * 2.0
            field[bars] = field[bars] * (x.abs() <= 1.0 - width_fraction).float()
        return field

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None):
        """Augment ``image`` (``[B, C, H, W]``, 0-255) and, with the same geometry, ``mask``.

        Returns:
            The augmented float image (0-255) and the augmented mask (``uint8`` 0/1, or ``None``).
        """
        batch, _, height, width = image.shape
        device = image.device
        x = self.intensity(image.float() / 255.0)
        mask = mask.float() if mask is not None else None
        zoomed = self._chosen(batch, self.p_zoom, device).nonzero()[:, 0]
        if len(zoomed):
            grid = self.zoom_grid(len(zoomed), height, width, device)
            x = x.index_copy(0, zoomed, F.grid_sample(x[zoomed], grid, mode="bilinear", padding_mode="zeros",
                                                      align_corners=False))
            if mask is not None:
                mask = mask.index_copy(0, zoomed, F.grid_sample(mask[zoomed], grid, mode="nearest",
                                                                padding_mode="zeros", align_corners=False))
        field = self.field_masks(batch, height, width, device)
        x = x * field
        if mask is not None:
            mask = (mask * field).to(torch.uint8)
        return x.clamp(0.0, 1.0) * 255.0, mask
