"""Probe geometries (linear array, convex/endocavity sector), beam-space sample grids and scan conversion.

A linear probe fires parallel beams: the beam grid is Cartesian and the output field is a square of side
``depth_mm``. A convex (curved-array or endocavity) probe fires beams fanning out from a centre of curvature
``radius_mm`` behind the probe face: the beam grid is polar (angle, depth along the beam) and the output is the
fan's bounding box, black outside the fan. In both cases depth ``z`` is measured from the probe face at the
centre beam and lateral ``x`` from the centre beam, in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SPEED_OF_SOUND_MM_US = 1.54


class PulseOptics:
    """Resolution of a probe from its centre frequency ``f0_mhz``, ``bandwidth`` and ``f_number`` (a mixin)."""

    f0_mhz: float
    bandwidth: float
    f_number: float

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
class LinearProbe(PulseOptics):
    """Acquisition settings of a linear array.

    Attributes:
        name: Probe model name (metadata only).
        f0_mhz: Centre frequency in MHz.
        depth_mm: Imaging depth in mm.
        width_mm: Lateral field of view in mm.
        focus_mm: Transmit focal depth in mm.
        f_number: Receive/transmit F-number at the focus.
        bandwidth: Fractional -6 dB bandwidth.
        compound_deg: Beam steering angles (degrees) of spatial compounding; empty: one unsteered frame.
        frame_width_mm: Lateral extent of the output frame when it is wider than the field (the aperture): the
            frame stays square with isotropic pixels and the columns beside the field are black, as a deep
            linear scan exported in a square frame. ``None``: the frame is the field (``width_mm``).
    """

    name: str
    f0_mhz: float
    depth_mm: float
    width_mm: float
    focus_mm: float
    f_number: float = 2.0
    bandwidth: float = 0.7
    compound_deg: tuple[float, ...] = ()
    frame_width_mm: float | None = None

    @property
    def frame_mm(self) -> float:
        """Lateral extent of the output frame in mm."""
        return self.width_mm if self.frame_width_mm is None else max(self.frame_width_mm, self.width_mm)


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

    def lateral_step_mm(self, z_mm: float) -> float:
        """Spacing between neighbouring beams at depth ``z_mm`` (constant for parallel beams)."""
        return self.dx_mm

    def beam_index(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional (axial, beam) grid indices of Cartesian points ``(x, z)`` in mm."""
        return (z - self.z_mm[0]) / self.dz_mm, (x - self.x_mm[0]) / self.dx_mm


def make_beam_grid(probe: Probe, size: int) -> BeamGrid | SectorGrid:
    """Build the beam-space grid for a probe and output size.

    The axial step is about sigma of the axial PSF and the lateral step about FWHM/2.5, capped at 2x and
    1.25x the output resolution so the grid stays small.

    Args:
        probe: Acquisition settings.
        size: Output image side in pixels.

    Returns:
        The beam grid.
    """
    if isinstance(probe, ConvexProbe):
        return _sector_grid(probe, size)
    px = probe.depth_mm / size
    dz = max(probe.axial_fwhm_mm / 2.355, px / 2.0)
    dx = max(probe.lateral_fwhm_mm / 2.5, px / 1.25)
    nz = int(np.ceil(probe.depth_mm / dz)) + 1
    nx = int(np.ceil(probe.width_mm / dx)) + 1
    z = np.linspace(0.0, probe.depth_mm, nz, dtype=np.float64)
    x = np.linspace(-probe.width_mm / 2.0, probe.width_mm / 2.0, nx, dtype=np.float64)
    return BeamGrid(x_mm=x, z_mm=z)


def output_coords(probe: Probe, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Physical coordinates (mm) of output pixel centres.

    Args:
        probe: Acquisition settings.
        size: Output side in pixels (square image; isotropic pixels for a linear probe, the fan's bounding box
            for a convex probe).

    Returns:
        ``(x, z)`` arrays of shape (1, size) and (size, 1).
    """
    if isinstance(probe, ConvexProbe):
        return _sector_output_coords(probe, size)
    px = probe.depth_mm / size
    z = (np.arange(size, dtype=np.float32) + 0.5) * px
    x = (np.arange(size, dtype=np.float32) + 0.5) * (probe.frame_mm / size) - probe.frame_mm / 2.0
    return x[None, :], z[:, None]


def upsample(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resample a coarse-grid map onto a finer grid covering the same extent."""
    zoom = (shape[0] / coarse.shape[0], shape[1] / coarse.shape[1])
    out = ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=False)
    return out[: shape[0], : shape[1]]


def scan_convert(beam_img: np.ndarray, grid: BeamGrid | SectorGrid, probe: Probe, size: int) -> np.ndarray:
    """Resample a beam-space image to the Cartesian output with anti-aliasing.

    Args:
        beam_img: Image on the beam grid, shape (nz, nx).
        grid: The beam grid.
        probe: Acquisition settings.
        size: Output side in pixels.

    Returns:
        float32 image of shape (size, size).
    """
    if isinstance(probe, ConvexProbe):
        return _sector_scan_convert(beam_img, grid, probe, size)
    x, z = output_coords(probe, size)
    sz = 0.35 * (probe.depth_mm / size) / grid.dz_mm
    sx = 0.35 * (probe.frame_mm / size) / grid.dx_mm
    smooth = ndimage.gaussian_filter(beam_img, (sz, sx), truncate=2.5) if max(sz, sx) > 0.3 else beam_img
    zi = (z[:, 0] - grid.z_mm[0]) / grid.dz_mm
    xi = (x[0] - grid.x_mm[0]) / grid.dx_mm
    zz, xx = np.meshgrid(zi, xi, indexing="ij")
    return ndimage.map_coordinates(smooth, [zz, xx], order=1, mode="nearest").astype(np.float32)


# --------------------------------------------------------------------------------- convex / sector geometry


@dataclass(frozen=True)
class ConvexProbe(PulseOptics):
    """Acquisition settings of a convex (curved) array, e.g. an endocavity transrectal probe.

    Beams leave the probe face (an arc of radius ``radius_mm``) along the radii of its centre of curvature,
    spread over ``span_deg``. The output image is the bounding box of the fan, resampled to a square: pixels are
    anisotropic (see :func:`pixel_spacing`), as when a wide scan is resized to a square model input.

    Attributes:
        name: Probe model name (metadata only).
        f0_mhz: Centre frequency in MHz.
        depth_mm: Imaging depth along each beam, from the probe face, in mm.
        radius_mm: Radius of curvature of the probe face in mm.
        span_deg: Angular field of view in degrees.
        focus_mm: Transmit focal depth in mm.
        f_number: Receive/transmit F-number at the focus.
        bandwidth: Fractional -6 dB bandwidth.
        compound_deg: Beam steering angles (degrees) of spatial compounding; empty: one unsteered frame.
    """

    name: str
    f0_mhz: float
    depth_mm: float
    radius_mm: float
    span_deg: float
    focus_mm: float
    f_number: float = 2.0
    bandwidth: float = 0.7
    compound_deg: tuple[float, ...] = ()

    @property
    def half_span(self) -> float:
        """Half the angular field of view in radians."""
        return float(np.deg2rad(self.span_deg) / 2.0)

    @property
    def width_mm(self) -> float:
        """Lateral extent of the fan (its bounding box) in mm."""
        return 2.0 * (self.radius_mm + self.depth_mm) * float(np.sin(self.half_span))

    @property
    def z_top_mm(self) -> float:
        """Depth of the fan's top edge (the ends of the probe face lie above the centre, so it is negative)."""
        return self.radius_mm * (float(np.cos(self.half_span)) - 1.0)

    @property
    def height_mm(self) -> float:
        """Axial extent of the fan (its bounding box) in mm."""
        return self.depth_mm - self.z_top_mm

    def to_beam(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cartesian ``(x, z)`` in mm to (depth along the beam in mm, beam angle in radians)."""
        zc = z + np.float32(self.radius_mm)
        return np.hypot(x, zc) - np.float32(self.radius_mm), np.arctan2(x, zc)

    def in_fan(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean: which Cartesian points lie inside the imaged fan."""
        r, theta = self.to_beam(x, z)
        return (r >= 0.0) & (r <= self.depth_mm) & (np.abs(theta) <= self.half_span)


Probe = LinearProbe | ConvexProbe


@dataclass(frozen=True)
class SectorGrid:
    """Polar beam-space grid of a convex probe (rows = samples along the beam, columns = beam angles).

    Attributes:
        theta: Beam angles in radians, shape (nx,).
        z_mm: Depths along the beam from the probe face, shape (nz,).
        radius_mm: Radius of curvature of the probe face (apex at ``z = -radius_mm``).
    """

    theta: np.ndarray
    z_mm: np.ndarray
    radius_mm: float

    @property
    def shape(self) -> tuple[int, int]:
        """Grid shape (nz, nx)."""
        return (self.z_mm.size, self.theta.size)

    @property
    def dz_mm(self) -> float:
        """Step along the beam in mm."""
        return float(self.z_mm[1] - self.z_mm[0])

    @property
    def dtheta(self) -> float:
        """Angular step between beams in radians."""
        return float(self.theta[1] - self.theta[0])

    def coarse(self, factor: int = 2) -> SectorGrid:
        """Return a grid subsampled by ``factor`` along both axes (for scene evaluation)."""
        return SectorGrid(theta=self.theta[::factor], z_mm=self.z_mm[::factor], radius_mm=self.radius_mm)

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """Cartesian (x, z) of every grid sample, both of shape (nz, nx), float32."""
        rad = (self.radius_mm + self.z_mm)[:, None]
        x = rad * np.sin(self.theta)[None, :]
        z = rad * np.cos(self.theta)[None, :] - self.radius_mm
        return x.astype(np.float32), z.astype(np.float32)

    def lateral_step_mm(self, z_mm: float) -> float:
        """Arc length between neighbouring beams at depth ``z_mm``."""
        return float((self.radius_mm + z_mm) * self.dtheta)

    def beam_index(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional (axial, beam) grid indices of Cartesian points ``(x, z)`` in mm."""
        zc = z + self.radius_mm
        r = np.hypot(x, zc) - self.radius_mm
        return (r - self.z_mm[0]) / self.dz_mm, (np.arctan2(x, zc) - self.theta[0]) / self.dtheta


def pixel_spacing(probe: Probe, size: int) -> tuple[float, float]:
    """Output pixel size (rows, columns) in mm."""
    if isinstance(probe, ConvexProbe):
        return probe.height_mm / size, probe.width_mm / size
    return probe.depth_mm / size, probe.frame_mm / size


def field_mask(probe: Probe, size: int) -> np.ndarray | None:
    """Boolean image of the pixels inside the imaged field (``None`` when every pixel is imaged)."""
    x, z = output_coords(probe, size)
    if isinstance(probe, ConvexProbe):
        return probe.in_fan(x, z)
    if probe.frame_mm <= probe.width_mm:
        return None
    return np.broadcast_to(np.abs(x) <= probe.width_mm / 2.0, (size, size)).copy()


def _sector_grid(probe: ConvexProbe, size: int) -> SectorGrid:
    """Polar grid: axial step as for a linear probe, beam spacing about FWHM/2.5 at the deepest point."""
    pz, px = pixel_spacing(probe, size)
    dz = max(probe.axial_fwhm_mm / 2.355, pz / 2.0)
    arc = max(probe.lateral_fwhm_mm / 2.5, px / 1.25)
    dtheta = arc / (probe.radius_mm + probe.depth_mm)
    nz = int(np.ceil(probe.depth_mm / dz)) + 1
    nx = int(np.ceil(2.0 * probe.half_span / dtheta)) + 1
    z = np.linspace(0.0, probe.depth_mm, nz, dtype=np.float64)
    theta = np.linspace(-probe.half_span, probe.half_span, nx, dtype=np.float64)
    return SectorGrid(theta=theta, z_mm=z, radius_mm=float(probe.radius_mm))


def _sector_output_coords(probe: ConvexProbe, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of the fan's bounding box, ``x`` of shape (1, size) and ``z`` of shape (size, 1)."""
    pz, px = pixel_spacing(probe, size)
    z = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(pz) + np.float32(probe.z_top_mm)
    x = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(px) - np.float32(probe.width_mm / 2.0)
    return x[None, :], z[:, None]


def _sector_scan_convert(beam_img: np.ndarray, grid: SectorGrid, probe: ConvexProbe, size: int) -> np.ndarray:
    """Polar-to-Cartesian resampling with anti-aliasing; pixels outside the fan take the nearest beam sample."""
    pz, px = pixel_spacing(probe, size)
    sz = 0.35 * pz / grid.dz_mm
    sx = 0.35 * px / grid.lateral_step_mm(probe.depth_mm / 2.0)
    smooth = ndimage.gaussian_filter(beam_img, (sz, sx), truncate=2.5) if max(sz, sx) > 0.3 else beam_img
    x, z = output_coords(probe, size)
    zi, xi = grid.beam_index(*np.broadcast_arrays(x, z))
    return ndimage.map_coordinates(smooth, [zi, xi], order=1, mode="nearest").astype(np.float32)
