"""Image formation: speckle, depth-dependent PSF, beam-wise attenuation, receiver and display."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .probe import BeamGrid, Probe, SectorGrid, upsample
from .scene import Scene

N_PSF_BANDS = 4


@dataclass(frozen=True)
class Receiver:
    """Receiver and display settings (nuisance variables).

    Attributes:
        alpha_nominal: Attenuation assumed by the TGC (dB/cm/MHz).
        tgc_slider_db: Slider offsets at evenly spaced depths (dB).
        noise_db: Electronic noise level relative to the reference tissue (dB).
        dynamic_range_db: Displayed dynamic range (dB).
        gain_target: Grey level (0-1) given to the median reference tissue.
        gamma: Display gamma.
        focal_gain_db: Extra gain around the focus (dB).
        smoothing_px: Sigma (output pixels) of the scanner's speckle-reduction smoothing of the log image before
            display; 0 (the default) means none.
    """

    alpha_nominal: float
    tgc_slider_db: tuple[float, ...]
    noise_db: float
    dynamic_range_db: float
    gain_target: float
    gamma: float
    focal_gain_db: float
    smoothing_px: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator, alpha_nominal: float) -> Receiver:
        """Draw receiver settings independently of the class."""
        return cls(
            alpha_nominal=alpha_nominal,
            tgc_slider_db=tuple(float(v) for v in rng.uniform(-3.0, 3.0, 6)),
            noise_db=float(rng.uniform(-62.0, -52.0)),
            dynamic_range_db=float(rng.uniform(48.0, 62.0)),
            gain_target=float(rng.uniform(0.35, 0.5)),
            gamma=float(rng.uniform(0.9, 1.15)),
            focal_gain_db=float(rng.uniform(0.5, 2.0)),
        )


def speckle_field(echo_db: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fully developed speckle: circular complex Gaussian scaled by the echo amplitude.

    Returns:
        Real and imaginary parts (float32).
    """
    amp = np.power(np.float32(10.0), echo_db / np.float32(20.0)).astype(np.float32)
    re = rng.standard_normal(echo_db.shape, dtype=np.float32) * amp
    im = rng.standard_normal(echo_db.shape, dtype=np.float32) * amp
    return re, im


def add_points(
    re: np.ndarray, im: np.ndarray, grid: BeamGrid | SectorGrid, points: list, rng: np.random.Generator
) -> None:
    """Add point reflectors (random phase) at their nearest beam-grid sample, in place."""
    if not points:
        return
    pts = np.asarray(points, np.float64)
    fz, fx = grid.beam_index(pts[:, 0], pts[:, 1])
    iz = np.rint(fz).astype(int)
    ix = np.rint(fx).astype(int)
    ok = (iz >= 0) & (iz < re.shape[0]) & (ix >= 0) & (ix < re.shape[1])
    amp = 10.0 ** (pts[:, 2] / 20.0) * 3.0
    phase = rng.uniform(0, 2 * np.pi, len(pts))
    np.add.at(re, (iz[ok], ix[ok]), (amp * np.cos(phase))[ok].astype(np.float32))
    np.add.at(im, (iz[ok], ix[ok]), (amp * np.sin(phase))[ok].astype(np.float32))


def lateral_kernel(fwhm_mm: float, dx_mm: float) -> np.ndarray:
    """Two-way sinc^2 lateral PSF with a Gaussian taper, normalised to unit energy."""
    w = fwhm_mm / 0.886
    half = max(2, int(np.ceil(2.5 * w / dx_mm)))
    x = np.arange(-half, half + 1) * dx_mm
    k = np.sinc(x / w) ** 2 * np.exp(-0.5 * (x / (1.5 * w)) ** 2)
    return (k / np.sqrt((k**2).sum())).astype(np.float32)


def lateral_fwhm(probe: Probe, z: np.ndarray) -> np.ndarray:
    """Lateral FWHM versus depth: focal value growing away from focus, with near-field broadening."""
    near = 1.0 + 0.6 * np.exp(-z / 4.0)
    return probe.lateral_fwhm_mm * (1.0 + 1.2 * np.abs(z - probe.focus_mm) / probe.depth_mm) * near


def apply_psf(re: np.ndarray, im: np.ndarray, grid: BeamGrid | SectorGrid, probe: Probe) -> np.ndarray:
    """Convolve the complex field with the axial and depth-dependent lateral PSF; return the envelope."""
    sig_ax = probe.axial_fwhm_mm / 2.355 / grid.dz_mm
    re = ndimage.gaussian_filter1d(re, sig_ax, axis=0, truncate=3.0)
    im = ndimage.gaussian_filter1d(im, sig_ax, axis=0, truncate=3.0)
    zb = np.linspace(grid.z_mm[0], grid.z_mm[-1], N_PSF_BANDS)
    fw = lateral_fwhm(probe, zb)
    # Row-wise blending weights: linear interpolation between band depths.
    t = np.interp(grid.z_mm, zb, np.arange(N_PSF_BANDS)).astype(np.float32)
    env2 = np.zeros(re.shape, np.float32)
    out_re = np.zeros(re.shape, np.float32)
    out_im = np.zeros(re.shape, np.float32)
    for i in range(N_PSF_BANDS):
        w = np.clip(1.0 - np.abs(t - i), 0.0, 1.0)[:, None]
        rows = w[:, 0] > 0
        k = lateral_kernel(float(fw[i]), grid.lateral_step_mm(float(zb[i])))
        out_re[rows] += w[rows] * ndimage.convolve1d(re[rows], k, axis=1, mode="reflect")
        out_im[rows] += w[rows] * ndimage.convolve1d(im[rows], k, axis=1, mode="reflect")
    np.multiply(out_re, out_re, out=env2)
    env2 += out_im * out_im
    return env2


def attenuation_loss_db(alpha: np.ndarray, grid: BeamGrid | SectorGrid, f0_mhz: float) -> np.ndarray:
    """Two-way cumulative attenuation along each beam (dB), shape of ``alpha``."""
    dz_cm = grid.dz_mm / 10.0
    return (2.0 * f0_mhz * dz_cm) * np.cumsum(alpha, axis=0, dtype=np.float32)


def tgc_db(grid: BeamGrid | SectorGrid, probe: Probe, rx: Receiver) -> np.ndarray:
    """Time-gain compensation (dB) versus depth, shape (nz, 1)."""
    z = grid.z_mm
    nominal = 2.0 * probe.f0_mhz * rx.alpha_nominal * z / 10.0
    knots = np.linspace(0, probe.depth_mm, len(rx.tgc_slider_db))
    slider = np.interp(z, knots, rx.tgc_slider_db)
    focal = rx.focal_gain_db * np.exp(-0.5 * ((z - probe.focus_mm) / (0.2 * probe.depth_mm)) ** 2)
    return (nominal + slider + focal).astype(np.float32)[:, None]


def steered_attenuation_loss_db(
    alpha: np.ndarray, grid: BeamGrid | SectorGrid, f0_mhz: float, angle_deg: float
) -> np.ndarray:
    """Two-way cumulative attenuation (dB) along beams steered by ``angle_deg`` from the grid's beam direction.

    The loss at each sample is summed along the straight path that reaches it from the probe face at that angle
    (the grid is sheared row by row, summed along its rows, and sheared back), so a strongly attenuating object
    shadows a slanted column: averaged over several angles, shadows and enhancement fan out and soften as in
    spatial compounding.

    Returns:
        The loss in dB, shape of ``alpha``.
    """
    if angle_deg == 0.0:
        return attenuation_loss_db(alpha, grid, f0_mhz)
    nz, nx = alpha.shape
    steps = np.asarray([grid.lateral_step_mm(float(z)) for z in grid.z_mm], np.float64)
    shift = (grid.z_mm - grid.z_mm[0]) * np.tan(np.deg2rad(angle_deg)) / steps
    rows = np.broadcast_to(np.arange(nz, dtype=np.float64)[:, None], (nz, nx))
    cols = np.arange(nx, dtype=np.float64)[None, :] + shift[:, None]
    sheared = ndimage.map_coordinates(alpha, [rows, cols], order=1, mode="nearest")
    loss = attenuation_loss_db(sheared.astype(np.float32), grid, f0_mhz)
    back = ndimage.map_coordinates(loss, [rows, np.arange(nx)[None, :] - shift[:, None]], order=1, mode="nearest")
    return back.astype(np.float32)


def _frame_intensity(
    echo: np.ndarray, alpha: np.ndarray, scene: Scene, grid: BeamGrid | SectorGrid, probe: Probe, rx: Receiver,
    rng: np.random.Generator, angle_deg: float,
) -> np.ndarray:
    """Received intensity of one (possibly steered) frame: speckle, PSF, attenuation, TGC, reverberation, noise."""
    shape = grid.shape
    re, im = speckle_field(echo, rng)
    add_points(re, im, grid, scene.points, rng)
    env2 = apply_psf(re, im, grid, probe)
    gain_db = tgc_db(grid, probe, rx) - steered_attenuation_loss_db(alpha, grid, probe.f0_mhz, angle_deg)
    if np.isfinite(scene.reverb_db).any():
        rev = upsample(np.where(np.isfinite(scene.reverb_db), scene.reverb_db, -200.0), shape)
        rev_amp2 = np.power(np.float32(10.0), rev / np.float32(10.0)) * rng.exponential(1.0, shape).astype(
            np.float32
        )
        rev_amp2 = ndimage.gaussian_filter1d(rev_amp2, 1.0, axis=1)
        env2 = env2 * np.power(np.float32(10.0), gain_db / np.float32(10.0)) + rev_amp2
    else:
        env2 = env2 * np.power(np.float32(10.0), gain_db / np.float32(10.0))
    noise = rng.exponential(1.0, shape).astype(np.float32) * np.float32(10.0 ** (rx.noise_db / 10.0))
    return env2 + noise * np.power(np.float32(10.0), tgc_db(grid, probe, rx) / np.float32(10.0))


def form_image_db(
    scene: Scene, grid: BeamGrid | SectorGrid, probe: Probe, rx: Receiver, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Run the physics pipeline on the beam grid.

    With spatial compounding (``probe.compound_deg``) every steering angle is a frame with its own speckle and noise
    realisation and its own slanted attenuation paths; the frames' intensities are averaged.

    Args:
        scene: Scene maps on a coarse grid.
        grid: Full beam grid.
        probe: Acquisition settings.
        rx: Receiver settings.
        rng: Random generator (speckle, noise, point phases).

    Returns:
        Log-compressed image in dB on the beam grid and the reference-tissue weight on that grid.
    """
    shape = grid.shape
    echo = upsample(scene.echo_db, shape)
    alpha = upsample(scene.alpha, shape)
    angles = tuple(probe.compound_deg) or (0.0,)
    env2 = _frame_intensity(echo, alpha, scene, grid, probe, rx, rng, float(angles[0]))
    for angle in angles[1:]:
        env2 = env2 + _frame_intensity(echo, alpha, scene, grid, probe, rx, rng, float(angle))
    if len(angles) > 1:
        env2 = env2 / np.float32(len(angles))
    img_db = np.float32(10.0) * np.log10(env2 + np.float32(1e-12))
    return img_db.astype(np.float32), upsample(scene.ref, shape)


def reference_level_db(img_db: np.ndarray, ref_w: np.ndarray) -> float:
    """Median dB of the background reference tissue (falls back to the whole image)."""
    sel = img_db[ref_w > 0.5]
    if sel.size < 200:
        sel = img_db.ravel()
    return float(np.median(sel))


def to_display(img_db: np.ndarray, ref_db: float, rx: Receiver) -> np.ndarray:
    """Map dB to 8-bit grey: the reference tissue median lands on ``rx.gain_target``."""
    if rx.smoothing_px > 0:
        img_db = ndimage.gaussian_filter(img_db, rx.smoothing_px, truncate=2.5)
    lo = ref_db - rx.gain_target * rx.dynamic_range_db
    g = np.clip((img_db - lo) / np.float32(rx.dynamic_range_db), 0.0, 1.0) ** np.float32(rx.gamma)
    return np.clip(g * 255.0 + 0.5, 0, 255).astype(np.uint8)
