"""Render one synthetic sample: descriptors -> scene -> physics -> display, plus exact mask."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .acquisition import extend_scene, get_acquisition
from .physics import form_image_db, reference_level_db, to_display
from .presets import PRESETS
from .probe import ConvexProbe, field_mask, make_beam_grid, output_coords, pixel_spacing, scan_convert
from .version import GENERATOR_VERSION


@dataclass
class SyntheticSample:
    """One generated image with its labels.

    Attributes:
        image: Grey image (H, W) uint8.
        mask: Lesion (or organ) mask (H, W) uint8 in {0, 1}; empty for normal images.
        label: Class name.
        descriptors: Lexicon descriptors (JSON-able).
        caption: Lexicon caption.
        meta: pixel_spacing_mm, probe, f0_mhz, depth_mm, seed, generator_version, preset; convex probes add
            pixel_spacing_x_mm (their pixels are anisotropic; ``pixel_spacing_mm`` is the row spacing),
            radius_mm and span_deg; an acquisition profile adds ``acquisition`` (its name).
    """

    image: np.ndarray
    mask: np.ndarray
    label: str
    descriptors: dict
    caption: str
    meta: dict = field(default_factory=dict)


def _stream(salt: int | None, *entropy: int) -> list[int]:
    """Seed entropy of one random stream, with the preset's salt appended when it has one."""
    return [*entropy] if salt is None else [*entropy, salt]


def sample_label(preset: str, seed: int) -> str:
    """Draw a class for a seed from the preset's class proportions (used when no label is given)."""
    p = PRESETS[preset]
    rng = np.random.default_rng(_stream(p.seed_salt, seed, 7))
    probs = np.asarray(p.class_probs, np.float64)
    return p.class_names[int(rng.choice(len(probs), p=probs / probs.sum()))]


def render_sample(preset: str, seed: int, size: int = 256, label: str | None = None,
                  acquisition: str | None = None) -> SyntheticSample:
    """Render one deterministic sample.

    Args:
        preset: Preset name, a key of ``PRESETS``.
        seed: Random seed; the same (preset, seed, size, label, acquisition) always gives identical arrays.
        size: Output side in pixels.
        label: Optional class name; by default drawn from the preset's class proportions.
        acquisition: Acquisition profile (a key of ``ACQUISITIONS``) applied to the drawn probe and receiver
            after the scene is built: the same seed gives the same scene, label and descriptors as without it.

    Returns:
        The sample.
    """
    p = PRESETS[preset]
    label = sample_label(preset, seed) if label is None else label
    if label not in p.class_names:
        raise ValueError(f"unknown label {label!r} for preset {preset!r}; expected one of {p.class_names}")
    rng = np.random.default_rng(_stream(p.seed_salt, seed, p.class_names.index(label), 1))
    desc = p.sample_descriptors(label, rng)
    probe, scene, rx = p.build_scene(desc, rng, size)
    if acquisition is not None:
        profile = get_acquisition(acquisition)
        probe, rx = profile.apply(probe, rx, size)
        if profile.depth_scale != 1.0:
            scene = extend_scene(scene, probe, size, rng)
    grid = make_beam_grid(probe, size)
    img_db, ref_w = form_image_db(scene, grid, probe, rx, rng)
    ref_db = reference_level_db(img_db, ref_w)
    image = to_display(scan_convert(img_db, grid, probe, size), ref_db, rx)
    x, z = output_coords(probe, size)
    mask = scene.mask(x, z)
    field = field_mask(probe, size)
    if field is not None:
        image = np.where(field, image, 0).astype(np.uint8)
        mask = (mask & field).astype(np.uint8)
    meta = {
        "pixel_spacing_mm": round(pixel_spacing(probe, size)[0], 6),
        "probe": probe.name,
        "f0_mhz": round(probe.f0_mhz, 4),
        "depth_mm": round(probe.depth_mm, 4),
        "seed": int(seed),
        "generator_version": GENERATOR_VERSION,
        "preset": preset,
    }
    if acquisition is not None:
        meta["acquisition"] = acquisition
    if isinstance(probe, ConvexProbe):
        meta["pixel_spacing_x_mm"] = round(pixel_spacing(probe, size)[1], 6)
        meta["radius_mm"] = round(probe.radius_mm, 4)
        meta["span_deg"] = round(probe.span_deg, 4)
    return SyntheticSample(image, mask, label, desc, p.caption(desc), meta)
