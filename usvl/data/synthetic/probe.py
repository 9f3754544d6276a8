"""Linear-array probe geometry, beam-space sample grid and scan conversion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SPEED_OF_SOUND_MM_US = 1.54


@dataclass(frozen=True)
class LinearProbe:
    """Acquisition settings of a linear array.

    Attributes:
        name: Probe model name (metadata only).
        f0_mhz: Centre frequency in MHz.
        depth_mm: Imaging depth in mm.
        width_mm: Lateral field of view in mm.
        focus_mm: Transmit focal depth in mm.
        f_number: Receive/transmit F-number at the focus.
        bandwidth: Fractional -6 dB bandwidth.
    """

    name: str
    f0_mhz: float
    depth_mm: float
    width_mm: float
    focus_mm: float
    f_number: float = 2.0
    bandwidth: float = 0.7

    @property
    def wavelength_mm(self) -> float:
        """Wavelength at the centre frequency in mm."""
        return SPEED_OF_SOUND_MM_US / self.f0_mhz

    @property
    def axial_fwhm_mm(self) -> float:
        """Axial resolution (FWHM of the pulse envelope) in mm."""
        return 1.3 * SPEED_OF_SOUND_MM_US / (2.0 * self.bandwidth * self.f0_mhz)

    @property
    def lateral_fwhm_mm(self) -> float:
        """Lateral resolution at the focus in mm."""
        return 1.1 * self.wavelength_mm * self.f_number


@dataclass(frozen=True)
class BeamGrid:
    """Beam-space sampling grid (rows = axial samples, columns = beam lines).

    Attributes:
        x_mm: Lateral beam positions, shape (nx,).
        z_mm: Axial sample depths, shape (nz,).
    """

    x_mm: np.ndarray
    z_mm: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """Grid shape (nz, nx)."""
        return (self.z_mm.size, self.x_mm.size)

    @property
    def dz_mm(self) -> float:
        """Axial sample step in mm."""
        return float(self.z_mm[1] - self.z_mm[0])

    @property
    def dx_mm(self) -> float:
        """Lateral beam spacing in mm."""
        return float(self.x_mm[1] - self.x_mm[0])

    def coarse(self, factor: int = 2) -> BeamGrid:
        """Return a grid subsampled by ``factor`` along both axes (for scene evaluation)."""
        return BeamGrid(x_mm=self.x_mm[::factor], z_mm=self.z_mm[::factor])

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """Return broadcastable (x, z) arrays of shape (1, nx) and (nz, 1)."""
        return self.x_mm[None, :].astype(np.float32), self.z_mm[:, None].astype(np.float32)


def make_beam_grid(probe: LinearProbe, size: int) -> BeamGrid:
    """Build the beam-space grid for a probe and output size.

    The axial step is about sigma of the axial PSF and the lateral step about FWHM/2.5, capped at 2x and
    1.25x the output resolution so the grid stays small.

    Args:
        probe: Acquisition settings.
        size: Output image side in pixels.

    Returns:
        The beam grid.
    """
    px = probe.depth_mm / size
    dz = max(probe.axial_fwhm_mm / 2.355, px / 2.0)
    dx = max(probe.lateral_fwhm_mm / 2.5, px / 1.25)
    nz = int(np.ceil(probe.depth_mm / dz)) + 1
    nx = int(np.ceil(probe.width_mm / dx)) + 1
    z = np.linspace(0.0, probe.depth_mm, nz, dtype=np.float64)
    x = np.linspace(-probe.width_mm / 2.0, probe.width_mm / 2.0, nx, dtype=np.float64)
    return BeamGrid(x_mm=x, z_mm=z)


def output_coords(probe: LinearProbe, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Physical coordinates (mm) of output pixel centres.

    Args:
        probe: Acquisition settings.
        size: Output side in pixels (square image, isotropic pixels).

    Returns:
        ``(x, z)`` arrays of shape (1, size) and (size, 1).
    """
    px = probe.depth_mm / size
    z = (np.arange(size, dtype=np.float32) + 0.5) * px
    x = (np.arange(size, dtype=np.float32) + 0.5) * (probe.width_mm / size) - probe.width_mm / 2.0
    return x[None, :], z[:, None]


def upsample(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resample a coarse-grid map onto a finer grid covering the same extent."""
    zoom = (shape[0] / coarse.shape[0], shape[1] / coarse.shape[1])
    out = ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=False)
    return out[: shape[0], : shape[1]]


def scan_convert(beam_img: np.ndarray, grid: BeamGrid, probe: LinearProbe, size: int) -> np.ndarray:
    """Resample a beam-space image to the Cartesian output with anti-aliasing.

    Args:
        beam_img: Image on the beam grid, shape (nz, nx).
        grid: The beam grid.
        probe: Acquisition settings.
        size: Output side in pixels.

    Returns:
        float32 image of shape (size, size).
    """
    x, z = output_coords(probe, size)
    sz = 0.35 * (probe.depth_mm / size) / grid.dz_mm
    sx = 0.35 * (probe.width_mm / size) / grid.dx_mm
    smooth = ndimage.gaussian_filter(beam_img, (sz, sx), truncate=2.5) if max(sz, sx) > 0.3 else beam_img
    zi = (z[:, 0] - grid.z_mm[0]) / grid.dz_mm
    xi = (x[0] - grid.x_mm[0]) / grid.dx_mm
    zz, xx = np.meshgrid(zi, xi, indexing="ij")
    return ndimage.map_coordinates(smooth, [zz, xx], order=1, mode="nearest").astype(np.float32)
