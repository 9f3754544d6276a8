"""Acquisition profiles: named changes of how a scene is imaged, never of what is imaged.

A profile maps the probe and receiver settings a preset drew for an image (its nuisance variables) to those of
another acquisition: probe frequency and bandwidth, F-number, imaging depth, spatial compounding, gain, dynamic
range, display gamma, TGC curve, noise floor, speckle-reduction smoothing. It is applied after the preset has built
the scene from the image's random stream, so the same seed gives the same anatomy, lesion, label, descriptors and
caption under every profile; only the image formation differs (and, for a deeper field, the pixel geometry of the
same mask). Profiles never touch the lesion statistics or the class model.

The mappings are deterministic functions of the drawn values (a scale or an offset), so the per-image spread of
the nuisances is kept and each profile moves it, like a second scanner or operator. ``centre_ext`` transplants the
differences between the lymph-node centres ``INT`` and ``EXT`` (range midpoints of ``presets/lymph_node.py``) onto
any preset: the LN-EXT-like centre shift.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage

from .physics import Receiver
from .presets.base import smooth_field
from .probe import ConvexProbe, LinearProbe, Probe, make_beam_grid, pixel_spacing
from .scene import Scene


@dataclass(frozen=True)
class Acquisition:
    """One acquisition profile: how the drawn probe and receiver settings change.

    Attributes:
        name: Registry key.
        description: What the profile changes, in words.
        f0_scale: Factor on the centre frequency (speckle size, resolution and frequency-dependent attenuation).
        f_number_scale: Factor on the F-number (lateral resolution and speckle width).
        bandwidth_scale: Factor on the fractional bandwidth (axial resolution and speckle length).
        depth_scale: Factor on the imaging depth. A linear probe keeps its aperture: the output stays a square
            frame of the new depth with isotropic pixels, black beside the field; the tissue below the preset's
            field is generic deep tissue. Convex probes are not supported.
        compound_deg: Spatial-compounding steering angles (degrees); empty: none.
        gain_offset: Added to the grey level of the median reference tissue (0-1; clipped to 0.05-0.9).
        dynamic_range_offset_db: Added to the displayed dynamic range (dB; at least 20 dB).
        gamma_offset: Added to the display gamma.
        tgc_ramp_db: TGC change (dB) at the top and at the bottom of the field, added linearly over the sliders.
        noise_offset_db: Added to the electronic noise level (dB).
        smoothing_mm: Speckle-reduction smoothing (Gaussian sigma, mm) added to the receiver's.
        focal_gain_offset_db: Added to the focal-zone gain (dB).
    """

    name: str
    description: str
    f0_scale: float = 1.0
    f_number_scale: float = 1.0
    bandwidth_scale: float = 1.0
    depth_scale: float = 1.0
    compound_deg: tuple[float, ...] = ()
    gain_offset: float = 0.0
    dynamic_range_offset_db: float = 0.0
    gamma_offset: float = 0.0
    tgc_ramp_db: tuple[float, float] = (0.0, 0.0)
    noise_offset_db: float = 0.0
    smoothing_mm: float = 0.0
    focal_gain_offset_db: float = 0.0

    @property
    def key(self) -> str:
        """``<name>-<8 hex digits>``: the name and a hash of the settings (cache folders go stale on a change)."""
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.name}-{digest}"

    def apply(self, probe: Probe, rx: Receiver, size: int) -> tuple[Probe, Receiver]:
        """The probe and receiver settings of this acquisition.

        Args:
            probe: The preset's drawn probe.
            rx: The preset's drawn receiver settings.
            size: Output image side in pixels (converts ``smoothing_mm`` to pixels).

        Raises:
            ValueError: ``depth_scale`` is not 1 for a convex probe.
        """
        changes: dict = {
            "f0_mhz": probe.f0_mhz * self.f0_scale,
            "f_number": probe.f_number * self.f_number_scale,
            "bandwidth": probe.bandwidth * self.bandwidth_scale,
            "compound_deg": tuple(float(a) for a in self.compound_deg),
        }
        if self.depth_scale != 1.0:
            if isinstance(probe, ConvexProbe):
                raise ValueError(f"acquisition {self.name!r} changes the depth, which convex probes do not support")
            depth = probe.depth_mm * self.depth_scale
            changes.update(depth_mm=depth, frame_width_mm=max(depth, probe.width_mm))
        shifted = replace(probe, **changes)
        sliders = np.asarray(rx.tgc_slider_db, np.float64)
        sliders = sliders + np.linspace(self.tgc_ramp_db[0], self.tgc_ramp_db[1], len(sliders))
        smoothing_px = self.smoothing_mm / pixel_spacing(shifted, size)[0]
        receiver = replace(
            rx,
            tgc_slider_db=tuple(float(v) for v in sliders),
            noise_db=rx.noise_db + self.noise_offset_db,
            dynamic_range_db=max(20.0, rx.dynamic_range_db + self.dynamic_range_offset_db),
            gain_target=float(np.clip(rx.gain_target + self.gain_offset, 0.05, 0.9)),
            gamma=max(0.3, rx.gamma + self.gamma_offset),
            focal_gain_db=rx.focal_gain_db + self.focal_gain_offset_db,
            smoothing_px=rx.smoothing_px + smoothing_px,
        )
        return shifted, receiver


ACQUISITIONS: dict[str, Acquisition] = {
    a.name: a
    for a in (
        Acquisition(
            "low_freq",
            "A lower-frequency probe: centre frequency x0.6 (e.g. 4.5-7.8 MHz instead of 7.5-13 MHz for thyroid) and "
            "bandwidth x0.85: coarser speckle and resolution cells axially and laterally, weaker "
            "frequency-dependent attenuation (fainter shadowing and enhancement).",
            f0_scale=0.6,
            bandwidth_scale=0.85,
        ),
        Acquisition(
            "high_gain",
            "Overall gain turned up: the median background tissue displays 0.2 of full scale brighter (clipped at "
            "0.9), so bright structures saturate and the noise floor shows.",
            gain_offset=0.2,
        ),
        Acquisition(
            "low_dynamic_range",
            "Displayed dynamic range 15 dB narrower (e.g. 33-47 dB instead of 48-62 dB): a harsher, higher-contrast "
            "picture in which dark lesions clip to black and bright echoes to white.",
            dynamic_range_offset_db=-15.0,
        ),
        Acquisition(
            "strong_tgc",
            "A steep time-gain-compensation curve: -5 dB at the top of the field rising linearly to +8 dB at the "
            "bottom (near field darker, deep field and its noise brighter).",
            tgc_ramp_db=(-5.0, 8.0),
        ),
        Acquisition(
            "coarse_speckle",
            "Coarser speckle at the same frequency: F-number x1.6 (wider lateral beam) and bandwidth x0.6 (longer "
            "pulse), so each speckle grain and resolution cell is about 1.6x wider and 1.7x longer.",
            f_number_scale=1.6,
            bandwidth_scale=0.6,
        ),
        Acquisition(
            "deep",
            "Imaging depth x1.4 on the same linear aperture: the field shows deeper tissue, every structure is 1.4x "
            "smaller in pixels, the square frame has black bars beside the field; the focus stays at its depth.",
            depth_scale=1.4,
        ),
        Acquisition(
            "compounded",
            "Spatial compounding of three frames steered at -10, 0 and +10 degrees: speckle averaged over three "
            "realisations (smoother texture), shadows and enhancement fanned out and softened.",
            compound_deg=(-10.0, 0.0, 10.0),
        ),
        Acquisition(
            "centre_ext",
            "The LN-EXT-like centre shift: the lymph-node EXT centre's differences from INT applied to this "
            "preset's draws -- frequency x0.7, F-number x1.3, bandwidth x0.8, dynamic range -10 dB, gain +0.1, "
            "gamma +0.15, TGC falling to -4.5 dB at depth, noise +5.5 dB, 0.085 mm speckle-reduction smoothing, "
            "focal gain +1 dB.",
            f0_scale=0.7,
            f_number_scale=1.3,
            bandwidth_scale=0.8,
            dynamic_range_offset_db=-10.0,
            gain_offset=0.1,
            gamma_offset=0.15,
            tgc_ramp_db=(0.0, -4.5),
            noise_offset_db=5.5,
            smoothing_mm=0.085,
            focal_gain_offset_db=1.0,
        ),
    )
}
"""The acquisition profiles by name (``render_sample(..., acquisition=name)``)."""


def get_acquisition(name: str) -> Acquisition:
    """The registered profile ``name``.

    Raises:
        KeyError: Unknown name; the message lists the available ones.
    """
    if name not in ACQUISITIONS:
        raise KeyError(f"Unknown acquisition profile {name!r}; available: {sorted(ACQUISITIONS)}")
    return ACQUISITIONS[name]


def extend_scene(scene: Scene, probe: Probe, size: int, rng: np.random.Generator) -> Scene:
    """The scene resampled onto the coarse grid of ``probe``, whose field reaches deeper than the scene's.

    Inside the scene's field the maps are interpolated; below it lies generic deep tissue: the median echogenicity
    of the scene's deepest tenth with a low-pass texture (drawn from ``rng``), its median attenuation, no reference
    tissue and no reverberation. Point reflectors and lesion shapes (physical coordinates) are kept.

    Raises:
        ValueError: The probe is not a linear probe.
    """
    if not isinstance(probe, LinearProbe):
        raise ValueError("only linear probes can image a deeper field")
    grid = make_beam_grid(probe, size).coarse(2)
    x, z = np.broadcast_arrays(*grid.mesh())
    fz, fx = scene.grid.beam_index(x, z)
    inside = fz <= scene.grid.shape[0] - 1
    tail = scene.echo_db[-max(1, scene.echo_db.shape[0] // 10):]
    fill_echo = float(np.median(tail)) + 1.5 * smooth_field(grid.shape, 6, rng)
    fill_alpha = float(np.median(scene.alpha[-max(1, scene.alpha.shape[0] // 10):]))

    def resample(values: np.ndarray, fill: np.ndarray | float) -> np.ndarray:
        inner = ndimage.map_coordinates(values, [fz, fx], order=1, mode="nearest")
        return np.where(inside, inner, fill).astype(np.float32)

    reverb = np.where(np.isfinite(scene.reverb_db), scene.reverb_db, -200.0)
    reverb = resample(reverb, -200.0)
    return Scene(
        grid=grid,
        echo_db=resample(scene.echo_db, fill_echo),
        alpha=resample(scene.alpha, fill_alpha),
        ref=resample(scene.ref, 0.0),
        reverb_db=np.where(reverb > -150.0, reverb, -np.inf).astype(np.float32),
        points=list(scene.points),
        lesions=list(scene.lesions),
    )
