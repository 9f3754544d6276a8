"""Preset protocol, shared sampling helpers and small texture utilities."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..physics import Receiver
from ..probe import LinearProbe, Probe
from ..scene import Scene

Table = Mapping[str, float]


@dataclass(frozen=True)
class Preset:
    """A registered synthetic dataset preset.

    Attributes:
        name: Registry key (e.g. ``"thyroid"``).
        class_names: Class names in integer-label order.
        class_probs: Class proportions used when balancing splits.
        prefix: File-name prefix (e.g. ``"synthyroid"``).
        dataset_name: NextGen-UIA dataset folder name (e.g. ``"SynThyroid"``).
        sample_descriptors: ``(label, rng) -> descriptors`` (class-conditional lexicon tables).
        build_scene: ``(descriptors, rng, size) -> (probe, scene, receiver)`` (nuisances drawn here).
        caption: ``descriptors -> caption``.
        tasks: Tasks the preset's labels support (``classification``, ``segmentation``).
        seed_salt: Extra entropy mixed into every image's random stream. Presets that share a scene model (two
            centres of one dataset) use distinct salts so that the same seed does not give the same patient;
            ``None`` keeps the original stream (thyroid, breast).
    """

    name: str
    class_names: tuple[str, ...]
    class_probs: tuple[float, ...]
    prefix: str
    dataset_name: str
    sample_descriptors: Callable[[str, np.random.Generator], dict]
    build_scene: Callable[[dict, np.random.Generator, int], tuple[Probe, Scene, Receiver]]
    caption: Callable[[dict], str]
    tasks: tuple[str, ...] = ("classification", "segmentation")
    seed_salt: int | None = None


def choose(table: Table, rng: np.random.Generator) -> str:
    """Draw one key of a probability table (probabilities are renormalised)."""
    keys = list(table)
    p = np.asarray([table[k] for k in keys], np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def smooth_field(
    shape: tuple[int, int], sigma: float | tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """Zero-mean, unit-std low-pass Gaussian random field (float32)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    return ((f - f.mean()) / (f.std() + 1e-6)).astype(np.float32)


def probe_and_receiver(
    rng: np.random.Generator, name: str, f0_range: tuple[float, float], depth_mm: float, alpha: float
) -> tuple[LinearProbe, Receiver]:
    """Draw a linear probe (square field, isotropic pixels) and receiver settings."""
    probe = LinearProbe(
        name=name,
        f0_mhz=float(rng.uniform(*f0_range)),
        depth_mm=float(depth_mm),
        width_mm=float(depth_mm),
        focus_mm=float(rng.uniform(0.35, 0.65) * depth_mm),
        f_number=float(rng.uniform(1.7, 2.4)),
        bandwidth=float(rng.uniform(0.6, 0.8)),
    )
    return probe, Receiver.sample(rng, alpha)


def line_band(z: np.ndarray, x: np.ndarray, z0: float, slope: float, half: float, soft: float) -> np.ndarray:
    """Weight of a thin straight band ``|z - (z0 + slope*x)| < half``."""
    d = np.abs(z - (z0 + slope * x)) - half
    return (1.0 / (1.0 + np.exp(np.clip(d / soft, -30, 30)))).astype(np.float32)
