"""Scene container: echogenicity/attenuation maps on a coarse grid, point reflectors and mask shapes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .probe import BeamGrid, SectorGrid
from .shapes import StarShape


def smoothstep_inside(d: np.ndarray, width: float) -> np.ndarray:
    """Soft inside weight from a signed distance (negative inside), sigmoid of ``width`` mm."""
    w = max(width, 1e-3)
    return (1.0 / (1.0 + np.exp(np.clip(d / np.float32(w), -30, 30)))).astype(np.float32)


def band(d: np.ndarray, lo: float, hi: float, soft: float = 0.08) -> np.ndarray:
    """Weight of the band ``lo < d < hi`` with soft edges."""
    return smoothstep_inside(lo - d, soft) * smoothstep_inside(d - hi, soft)


@dataclass
class Scene:
    """Scene maps evaluated at coarse beam-grid samples.

    Attributes:
        grid: Coarse grid where the maps live (Cartesian for a linear probe, polar for a convex one; the maps are
            indexed (sample along the beam, beam) either way and ``xz`` gives the Cartesian position of each).
        echo_db: Echogenicity in dB relative to the reference parenchyma.
        alpha: Attenuation in dB/cm/MHz.
        ref: Weight of the background reference tissue (used for display gain).
        reverb_db: Post-attenuation additive echo (dB); ``-inf`` where absent.
        points: Point reflectors as rows ``(x_mm, z_mm, amp_db)``.
        lesions: Star shapes whose union is the ground-truth mask.
    """

    grid: BeamGrid | SectorGrid
    echo_db: np.ndarray
    alpha: np.ndarray
    ref: np.ndarray
    reverb_db: np.ndarray
    points: list[tuple[float, float, float]] = field(default_factory=list)
    lesions: list[StarShape] = field(default_factory=list)

    @classmethod
    def empty(cls, grid: BeamGrid | SectorGrid, echo_db: float, alpha: float) -> Scene:
        """Create a homogeneous scene."""
        shape = grid.shape
        return cls(
            grid=grid,
            echo_db=np.full(shape, echo_db, np.float32),
            alpha=np.full(shape, alpha, np.float32),
            ref=np.zeros(shape, np.float32),
            reverb_db=np.full(shape, -np.inf, np.float32),
        )

    @property
    def xz(self) -> tuple[np.ndarray, np.ndarray]:
        """Broadcastable Cartesian coordinates of the coarse grid in mm.

        Linear grids give x of shape (1, nx) and z of shape (nz, 1); sector grids give two (nz, nx) arrays.
        """
        return self.grid.mesh()

    def paint(self, weight: np.ndarray, echo_db: float | np.ndarray, alpha: float | None = None) -> None:
        """Blend a region into the maps: ``map = map * (1 - w) + value * w``."""
        w = np.broadcast_to(weight, self.echo_db.shape).astype(np.float32)
        self.echo_db = self.echo_db * (1 - w) + np.asarray(echo_db, np.float32) * w
        if alpha is not None:
            self.alpha = self.alpha * (1 - w) + np.float32(alpha) * w

    def add_db(self, weight: np.ndarray, delta_db: float | np.ndarray) -> None:
        """Add ``delta_db * weight`` to the echogenicity."""
        self.echo_db = self.echo_db + np.asarray(weight, np.float32) * np.asarray(delta_db, np.float32)

    def add_alpha(self, weight: np.ndarray, delta: float) -> None:
        """Add ``delta * weight`` to the attenuation."""
        self.alpha = self.alpha + np.asarray(weight, np.float32) * np.float32(delta)

    def add_point(self, x: float, z: float, amp_db: float) -> None:
        """Add a point reflector."""
        self.points.append((float(x), float(z), float(amp_db)))

    def add_reverb(self, weight: np.ndarray, level_db: float) -> None:
        """Add a post-attenuation echo where ``weight > 0.05``."""
        w = np.broadcast_to(weight, self.reverb_db.shape)
        val = np.where(w > 0.05, level_db + 20 * np.log10(np.maximum(w, 1e-3)), -np.inf).astype(np.float32)
        self.reverb_db = np.maximum(self.reverb_db, val)

    def mask(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Exact ground-truth mask (uint8 0/1) at the given coordinates."""
        out = np.zeros(np.broadcast_shapes(x.shape, z.shape), bool)
        for s in self.lesions:
            out |= s.contains(x, z)
        return out.astype(np.uint8)
