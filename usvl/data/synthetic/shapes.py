"""Star-shaped lesion/organ model with exact analytic inside test and signed radial distance."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StarShape:
    """A star-shaped region: an ellipse modulated by harmonics, angular corners and radial spicules.

    The boundary radius is ``R(phi) = ellipse(phi) * (1 + sum_k a_k cos(k phi + p_k) + corners + spicules)``
    in the shape's rotated frame. Inside means ``rho < R(phi)``.

    Attributes:
        cx: Centre, lateral (mm).
        cz: Centre, depth (mm).
        a: Semi-axis along the rotated x axis (mm).
        b: Semi-axis along the rotated z axis (mm).
        rot: Rotation in radians.
        harmonics: Rows ``(k, amplitude, phase)``.
        spicules: Rows ``(angle, half_width_rad, relative_length)``.
        corners: Rows ``(angle, half_width_rad, relative_height)`` for angular (tent-like) bumps.
    """

    cx: float
    cz: float
    a: float
    b: float
    rot: float = 0.0
    harmonics: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    spicules: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    corners: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))

    def polar(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (rho, phi) of points in the shape's rotated frame."""
        dx = x - np.float32(self.cx)
        dz = z - np.float32(self.cz)
        c, s = np.float32(np.cos(self.rot)), np.float32(np.sin(self.rot))
        u = c * dx + s * dz
        v = -s * dx + c * dz
        return np.hypot(u, v), np.arctan2(v, u)

    def radius(self, phi: np.ndarray) -> np.ndarray:
        """Boundary radius R(phi) in mm."""
        c, s = np.cos(phi), np.sin(phi)
        ell = (self.a * self.b) / np.sqrt((self.b * c) ** 2 + (self.a * s) ** 2)
        mod = np.ones_like(phi)
        for k, amp, ph in self.harmonics:
            mod = mod + np.float32(amp) * np.cos(np.float32(k) * phi + np.float32(ph))
        for rows, power in ((self.corners, 1.0), (self.spicules, 2.0)):
            for ang, hw, h in rows:
                d = np.abs(np.angle(np.exp(1j * (phi - ang)))).astype(np.float32)
                mod = mod + np.float32(h) * np.clip(1.0 - d / np.float32(hw), 0.0, None) ** power
        return (ell * mod).astype(np.float32)

    def signed_distance(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed radial distance rho - R(phi) in mm (negative inside)."""
        rho, phi = self.polar(x, z)
        return (rho - self.radius(phi)).astype(np.float32)

    def contains(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean inside test."""
        return self.signed_distance(x, z) < 0

    def extent(self) -> float:
        """Upper bound of the boundary radius in mm."""
        phi = np.linspace(-np.pi, np.pi, 721, dtype=np.float32)
        return float(self.radius(phi).max())

    def radial_cos(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """|cos| of the angle between the outward radial direction and the beam (z axis).

        Used as a proxy of ``|n . beam|`` for specular capsules and lateral edge shadows.
        """
        dx = x - np.float32(self.cx)
        dz = z - np.float32(self.cz)
        return (np.abs(dz) / (np.hypot(dx, dz) + 1e-3)).astype(np.float32)
