"""Prostate preset (micro-US / TRUS-like, endocavity sector, transverse view) for gland segmentation.

The project's prostate data (NextGen-UIA "Prostate", the MicroSegNet micro-ultrasound set, 29 MHz) is a gland
segmentation task without image-level labels, so this preset has one class, ``prostate`` (the class name of
:class:`usvl.data.sources.prostate.ProstateDataModule`, so both read the same class descriptions), and its mask
is the whole gland (capsule bulges included). Lesions are drawn as *descriptors* only -- nuisances that make the
gland harder to outline -- following the TRUS lesion model: hypoechoic, ill-defined peripheral-zone (PZ)
lesions near the capsule, sometimes bulging it (25 % of them nearly isoechoic), and circumscribed
transition-zone (TZ) nodules of benign prostatic hyperplasia, with prostatic calcifications that may shadow.

Geometry: an endocavity convex probe (95-120 degree sector, 34-42 mm depth, radius of curvature 9-12 mm) at a
micro-US-like 20-29 MHz; the image is the fan's bounding box resampled to a square, black outside the fan.
Attenuation values are *effective* ones (about a fifth of the textbook 0.5-0.8 dB/cm/MHz) standing in for the
frequency downshift with depth that lets real micro-US reach the anterior gland.

Boundary ambiguity (generator 1.2.0), so the outline is as hard to trace as on real micro-US (MicroSegNet reaches
Dice about 0.93): a variable, often asymmetric outline (flattened posterior surface, BPH-enlarged TZ pushing the
anterior/lateral contour, TZ nodules reaching the capsule); a capsule line that fades out over random arcs and is
weak anteriorly and laterally; periprostatic tissue of gland-like echotexture (venous plexus, fibrous fat) hugging
parts of the outline; a boundary that is sharp in places and partial-volume blurred in others; shadows from
calcifications on the capsule and from poor probe contact at the fan edges; and contrast that fades with depth.
The mask is still the true gland outline.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..captions import prostate_caption
from ..physics import Receiver
from ..probe import ConvexProbe, make_beam_grid
from ..scene import Scene, band, smoothstep_inside
from ..shapes import StarShape
from .base import Preset, choose, smooth_field

CLASS_NAMES = ("prostate",)

TRANSITION_ZONE = {"normal": 0.5, "enlarged": 0.5}
LESION = {"none": 0.4, "pz_hypoechoic": 0.225, "pz_isoechoic": 0.075, "tz_nodule": 0.3}
CALCIFICATION = {
    "none": {"none": 0.55, "scattered": 0.3, "shadowing": 0.15},
    "pz_hypoechoic": {"none": 0.65, "scattered": 0.25, "shadowing": 0.1},
    "pz_isoechoic": {"none": 0.65, "scattered": 0.25, "shadowing": 0.1},
    "tz_nodule": {"none": 0.35, "scattered": 0.35, "shadowing": 0.3},
}
CAPSULE_BULGE = 0.6  # probability that a PZ lesion bulges the capsule

TISSUE_ALPHA = 0.14
FAT_DB = 4.0
MUSCLE_DB = -8.0
CALC_DB = (20.0, 26.0)


def sample_descriptors(label: str, rng: np.random.Generator) -> dict:
    """Draw the (class-independent) gland descriptors.

    Args:
        label: Always ``prostate``.
        rng: Random generator.

    Returns:
        ``transition_zone``, ``lesion``, ``capsule`` and ``calcification``.
    """
    tz = choose(TRANSITION_ZONE, rng)
    lesion = choose(LESION, rng)
    bulge = rng.uniform() < CAPSULE_BULGE
    capsule = "bulge" if lesion.startswith("pz_") and bulge else "smooth"
    return {"transition_zone": tz, "lesion": lesion, "capsule": capsule,
            "calcification": choose(CALCIFICATION[lesion], rng)}


def _layout(rng: np.random.Generator, desc: dict) -> dict:
    """Probe geometry, rectal-wall and gland dimensions (nuisances)."""
    g = {"radius": rng.uniform(9.0, 12.0), "span": rng.uniform(95.0, 120.0)}
    g["wall"] = rng.uniform(0.8, 1.3)  # rectal-wall thickness scale
    g["a"] = rng.uniform(14.0, 22.0)
    g["b"] = rng.uniform(9.5, 15.0)
    g["top"] = 3.6 * g["wall"] + rng.uniform(0.5, 3.0)
    g["cz"] = g["top"] + g["b"]
    g["cx"] = rng.uniform(-5.0, 5.0)
    g["depth"] = max(rng.uniform(34.0, 42.0), g["cz"] + g["b"] * 1.15 + 3.0)
    scale = (0.6, 0.85) if desc["transition_zone"] == "enlarged" else (0.3, 0.5)
    g["tz_a"] = g["a"] * rng.uniform(*scale)
    g["tz_b"] = g["b"] * rng.uniform(*scale)
    g["bladder"] = bool(rng.uniform() < 0.25)
    return g


def _beam_depth(sc: Scene, radius: float) -> np.ndarray:
    """Depth along the beam (distance from the probe face) of every coarse-grid sample."""
    x, z = sc.xz
    return (np.hypot(x, z + np.float32(radius)) - np.float32(radius)).astype(np.float32)


def _rectal_wall(sc: Scene, g: dict) -> None:
    """Five-layer rectal wall concentric with the probe face, then perirectal fat."""
    r = _beam_depth(sc, g["radius"])
    s = g["wall"]
    for lo, hi, db in ((0.0, 0.3, 10.0), (0.3, 0.9, -10.0), (0.9, 1.5, 6.0), (1.5, 3.0, -9.0), (3.0, 3.4, 6.0)):
        sc.paint(band(r, lo * s, hi * s, 0.06), db)


def _surroundings(sc: Scene, g: dict, gland: StarShape, rng: np.random.Generator) -> None:
    """Periprostatic fat, levator ani, neurovascular bundles, venous plexus and (sometimes) the bladder."""
    x, z = sc.xz
    shape = sc.echo_db.shape
    outside = smoothstep_inside(-gland.signed_distance(x, z), 0.3)
    deep = smoothstep_inside(3.4 * g["wall"] - _beam_depth(sc, g["radius"]), 0.1)
    fat_db = FAT_DB - rng.uniform(0.0, 2.5)  # periprostatic fat is only mildly brighter than the gland
    sc.paint(outside * deep, fat_db + 2.5 * smooth_field(shape, 5, rng), 0.12)
    for side in (-1.0, 1.0):
        levator = StarShape(
            cx=gland.cx + side * (gland.a + rng.uniform(2.0, 5.0)),
            cz=gland.cz + rng.uniform(-2.0, 3.0),
            a=rng.uniform(2.0, 3.5),
            b=rng.uniform(8.0, 12.0),
            rot=float(side * rng.uniform(0.2, 0.5)),
        )
        sc.paint(smoothstep_inside(levator.signed_distance(x, z), 0.4) * deep, MUSCLE_DB, 0.2)
        for k in range(int(rng.integers(2, 5))):
            nvb = StarShape(
                cx=gland.cx + side * gland.a * rng.uniform(0.6, 0.85) + rng.uniform(-1.5, 1.5),
                cz=gland.cz - gland.b * rng.uniform(0.55, 0.85) + rng.uniform(-1.0, 1.0) * k,
                a=rng.uniform(0.3, 0.8),
                b=rng.uniform(0.3, 0.8),
            )
            sc.paint(smoothstep_inside(nvb.signed_distance(x, z), 0.15) * outside, -18.0, 0.1)
    for _ in range(int(rng.integers(2, 6))):
        vein = StarShape(
            cx=gland.cx + rng.uniform(-0.7, 0.7) * gland.a,
            cz=gland.cz + gland.b + rng.uniform(1.0, 3.0),
            a=rng.uniform(0.6, 1.5),
            b=rng.uniform(0.4, 0.8),
        )
        sc.paint(smoothstep_inside(vein.signed_distance(x, z), 0.2) * outside, -22.0, 0.1)
    if g["bladder"]:
        wall_z = gland.cz + gland.b + rng.uniform(3.0, 6.0)
        bladder = smoothstep_inside(wall_z + 0.02 * (x - gland.cx) ** 2 - z, 0.2)
        sc.add_db(band(z - 0.02 * (x - gland.cx) ** 2, wall_z - 1.2, wall_z, 0.1), 5.0)
        sc.paint(bladder * outside, -45.0, 0.01)


def _gland_shape(g: dict, desc: dict, lesion_angle: float, rng: np.random.Generator) -> StarShape:
    """Gland outline: a lobulated, often asymmetric rounded shape with a flattened posterior surface.

    An enlarged TZ pushes the anterior and lateral contour out (BPH); a PZ lesion may bulge the capsule.
    """
    harm = [(1, rng.uniform(0.0, 0.06), rng.uniform(0, 6.3)), (2, rng.uniform(0.0, 0.07), rng.uniform(0, 6.3)),
            (3, rng.uniform(0.01, 0.08), rng.uniform(0, 6.3)), (4, rng.uniform(0.0, 0.03), rng.uniform(0, 6.3))]
    rot = float(rng.uniform(-0.15, 0.15))
    # Posterior (toward the probe, angle -pi/2) flattening, then BPH lobes anterolaterally.
    corners = [(-np.pi / 2 - rot, rng.uniform(0.6, 1.1), -rng.uniform(0.03, 0.12))]
    if desc["transition_zone"] == "enlarged":
        for _ in range(int(rng.integers(1, 3))):
            ang = np.pi / 2 + rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 1.2)
            corners.append((ang - rot, rng.uniform(0.5, 1.0), rng.uniform(0.04, 0.12)))
    if desc["capsule"] == "bulge":
        corners.append((lesion_angle - rot, rng.uniform(0.25, 0.4), rng.uniform(0.06, 0.12)))
    return StarShape(cx=g["cx"], cz=g["cz"], a=g["a"], b=g["b"], rot=rot, harmonics=np.asarray(harm, np.float32),
                     corners=np.asarray(corners, np.float32).reshape(-1, 3))


def _angular_gate(phi: np.ndarray, rng: np.random.Generator, level: float, k_max: int = 4) -> np.ndarray:
    """Smooth random periodic gate in [0, 1] along the outline angle; ``level`` shifts the fraction that is on."""
    f = np.zeros_like(phi)
    for k in range(1, k_max + 1):
        f = f + np.float32(rng.normal(0.0, 1.0 / k)) * np.cos(np.float32(k) * phi + np.float32(rng.uniform(0, 6.3)))
    f = f / (np.float32(np.abs(f).max()) + np.float32(1e-3))
    return np.clip((f + np.float32(level)) * 2.5 + 0.5, 0.0, 1.0).astype(np.float32)


def _periprostatic_cuff(sc: Scene, gland: StarShape, rng: np.random.Generator) -> None:
    """Periprostatic venous plexus / fibrous fat of gland-like echotexture hugging arcs of the outline."""
    x, z = sc.xz
    shape = sc.echo_db.shape
    d = gland.signed_distance(x, z)
    _, phi = gland.polar(x, z)
    gate = _angular_gate(phi, rng, rng.uniform(-0.1, 0.35))
    thick = rng.uniform(1.5, 5.0) * (0.6 + 0.4 * smooth_field(shape, 6, rng) ** 2)
    cuff = smoothstep_inside(-d, 0.2) * smoothstep_inside(d - thick, 0.6) * gate
    sc.paint(cuff, rng.uniform(-1.0, 1.0) + 1.5 * smooth_field(shape, 3, rng), TISSUE_ALPHA)
    for _ in range(int(rng.integers(0, 6))):  # small veins of the plexus within the cuff
        t = rng.uniform(-np.pi, np.pi)
        r = float(gland.radius(np.float32(t - gland.rot))) + rng.uniform(0.5, 2.5)
        vein = StarShape(cx=gland.cx + r * np.cos(t), cz=gland.cz + r * np.sin(t), a=rng.uniform(0.4, 1.0),
                         b=rng.uniform(0.3, 0.6), rot=float(t + np.pi / 2))
        sc.paint(smoothstep_inside(vein.signed_distance(x, z), 0.15) * (d > 0), rng.uniform(-16.0, -8.0), 0.1)


def _edge_shadows(sc: Scene, g: dict, gland: StarShape, rng: np.random.Generator) -> None:
    """Shadows crossing the gland edge: calcifications on the capsule, and poor probe contact at the fan edges."""
    x, z = sc.xz
    for _ in range(int(rng.poisson(0.5))):
        t = rng.uniform(-np.pi, 0.0) if rng.uniform() < 0.6 else rng.choice([0.0, np.pi]) + rng.uniform(-0.4, 0.4)
        r = float(gland.radius(np.float32(t - gland.rot))) + rng.uniform(-1.5, 0.8)
        px, pz = gland.cx + r * np.cos(t), gland.cz + r * np.sin(t)
        calc = StarShape(cx=px, cz=pz, a=rng.uniform(1.0, 2.5), b=rng.uniform(0.4, 0.8),
                         rot=float(rng.uniform(-0.5, 0.5)))
        dc = calc.signed_distance(x, z)
        sector = (z < pz).astype(np.float32)
        sc.add_db(band(dc, -0.3, 0.0, 0.05) * sector, rng.uniform(16.0, 24.0))
        sc.add_alpha(band(dc, -0.8, -0.3, 0.1) * sector, rng.uniform(4.0, 14.0))
    if rng.uniform() < 0.45:  # poor contact (gas, or the probe tilted) at one or both fan edges
        theta = np.degrees(np.arctan2(x, z + np.float32(g["radius"])))
        near = smoothstep_inside(_beam_depth(sc, g["radius"]) - 0.4, 0.1)
        half = g["span"] / 2
        for side in ((-1.0,), (1.0,), (-1.0, 1.0))[int(rng.integers(0, 3))]:
            edge = half - rng.uniform(10.0, 30.0)
            w = smoothstep_inside(edge - side * theta, rng.uniform(1.0, 4.0))
            sc.add_alpha(w * near, rng.uniform(8.0, 20.0) / (0.08 * g["f0"]))


def _degrade(sc: Scene, g: dict, gland: StarShape, rng: np.random.Generator) -> None:
    """Partial-volume blurring over arcs of the outline and contrast that fades with depth."""
    x, z = sc.xz
    step = float(np.abs(z[1, z.shape[1] // 2] - z[0, z.shape[1] // 2])) if z.shape[0] > 1 else 0.15
    step = max(step, 1e-2)
    d = gland.signed_distance(x, z)
    _, phi = gland.polar(x, z)
    sig = rng.uniform(1.0, 2.5) / step
    blurred = ndimage.gaussian_filter(sc.echo_db, sig, mode="nearest")
    gate = _angular_gate(phi, rng, rng.uniform(-0.1, 0.35)) * smoothstep_inside(np.abs(d) - 2.5, 0.8)
    sc.echo_db = sc.echo_db * (1 - gate) + blurred * gate
    z0 = gland.cz + gland.b * rng.uniform(-0.2, 0.4)
    fade = rng.uniform(0.3, 0.8) * smoothstep_inside(np.float32(z0) - z, rng.uniform(2.0, 4.0))
    far = ndimage.gaussian_filter(sc.echo_db, rng.uniform(1.5, 3.0) / step, mode="nearest")
    sc.echo_db = (sc.echo_db * (1 - fade) + far * fade).astype(np.float32)


def _calcified_arc(sc: Scene, d: np.ndarray, sector: np.ndarray) -> None:
    """Bright calcified front (d in [-0.3, 0] mm) followed by a strongly attenuating layer (shadow)."""
    sc.add_db(band(d, -0.3, 0.0, 0.05) * sector, 22.0)
    sc.add_alpha(band(d, -0.8, -0.3, 0.05) * sector, 30.0)


def _gland(sc: Scene, g: dict, desc: dict, gland: StarShape, rng: np.random.Generator) -> np.ndarray:
    """Peripheral and transition zones, urethra, anterior stroma, capsule, lesion and calcifications.

    Returns:
        Weight of the reference tissue (peripheral zone away from lesions and shadows).
    """
    x, z = sc.xz
    shape = sc.echo_db.shape
    d = gland.signed_distance(x, z)
    _, phi = gland.polar(x, z)
    w = smoothstep_inside(d, 0.25)
    # Edge sharpness varies along the outline (sharp where the capsule is seen, gradual elsewhere).
    soft = 0.25 + rng.uniform(0.5, 1.5) * (1.0 - _angular_gate(phi, rng, rng.uniform(-0.2, 0.3)))
    w_echo = 1.0 / (1.0 + np.exp(np.clip(d / soft, -30, 30))).astype(np.float32)
    sc.paint(w_echo, 1.5 * smooth_field(shape, 3, rng), TISSUE_ALPHA)
    tz = StarShape(cx=gland.cx + rng.uniform(-1.0, 1.0), cz=gland.cz + gland.b * rng.uniform(0.0, 0.2),
                   a=g["tz_a"], b=g["tz_b"],
                   harmonics=np.asarray([(3, rng.uniform(0.0, 0.06), rng.uniform(0, 6.3))], np.float32))
    dt = tz.signed_distance(x, z)
    w_tz = smoothstep_inside(dt, 0.5) * w
    sc.paint(w_tz, -3.0 + 2.5 * smooth_field(shape, 2.5, rng), TISSUE_ALPHA)
    if desc["transition_zone"] == "enlarged":
        for _ in range(int(rng.integers(2, 6))):
            t, rr = rng.uniform(-np.pi, np.pi), np.sqrt(rng.uniform(0.0, 0.6))
            nod = StarShape(cx=tz.cx + rr * tz.a * np.cos(t), cz=tz.cz + rr * tz.b * np.sin(t),
                            a=rng.uniform(1.5, 3.5), b=rng.uniform(1.5, 3.0))
            sc.add_db(smoothstep_inside(nod.signed_distance(x, z), 0.3) * w_tz, rng.choice([-1.0, 1.0]) * 4.0)
        for _ in range(int(rng.integers(1, 4))):  # heterogeneous BPH nodules reaching the capsule
            t = rng.uniform(0.1, np.pi - 0.1) if rng.uniform() < 0.7 else rng.uniform(-np.pi, 0.0)
            r_edge = float(gland.radius(np.float32(t - gland.rot)))
            rad = rng.uniform(2.0, 4.5)
            rr = r_edge - rad * rng.uniform(0.3, 0.9)
            nod = StarShape(cx=gland.cx + rr * np.cos(t), cz=gland.cz + rr * np.sin(t), a=rad,
                            b=rad * rng.uniform(0.7, 1.0), rot=float(t))
            sc.add_db(smoothstep_inside(nod.signed_distance(x, z), 0.4) * w,
                      rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 6.0) + 2.0 * smooth_field(shape, 1.5, rng))
    sc.add_db(band(dt, -0.1, 0.3, 0.1) * w, 3.0)  # surgical capsule
    stroma = smoothstep_inside(-(z - (gland.cz + gland.b * 0.7)), 0.8) * w
    sc.add_db(stroma, -5.0)
    urethra = StarShape(cx=tz.cx, cz=tz.cz - tz.b * rng.uniform(0.0, 0.3), a=rng.uniform(1.0, 1.6),
                        b=rng.uniform(0.8, 1.3))
    du = urethra.signed_distance(x, z)
    sc.paint(smoothstep_inside(du, 0.15), -14.0, 0.1)
    sc.add_db(band(du, 0.0, 0.4, 0.1), 5.0)
    # Capsule: specular (weak at the lateral edges), fainter anteriorly, missing over random arcs.
    anterior = 1.0 - rng.uniform(0.3, 0.8) * smoothstep_inside(gland.cz - z, 2.0)
    capsule = _angular_gate(phi, rng, rng.uniform(-0.45, 0.2)) * anterior
    sc.add_db(band(d, -0.2, 0.3, 0.08) * (0.2 + 0.8 * gland.radial_cos(x, z) ** 2) * capsule,
              rng.uniform(3.0, 9.0))
    ref = (d < -1.0) & (dt > 1.0)
    les = _lesion(sc, desc, gland, tz, rng)
    if les is not None:
        r = les.extent() + 1.0
        ref &= (les.signed_distance(x, z) > 1.5) & ~((np.abs(x - les.cx) < r) & (z > les.cz))
    _calcifications(sc, desc, tz, rng)
    return ref.astype(np.float32)


def _lesion(sc: Scene, desc: dict, gland: StarShape, tz: StarShape, rng: np.random.Generator) -> StarShape | None:
    """Paint the focal lesion (PZ cancer near the capsule, or a TZ nodule); returns its outline."""
    x, z = sc.xz
    kind = desc["lesion"]
    if kind == "none":
        return None
    shape = sc.echo_db.shape
    if kind == "tz_nodule":
        t, rr = rng.uniform(-np.pi, np.pi), np.sqrt(rng.uniform(0.0, 0.4))
        rad = min(rng.uniform(3.0, 6.0), 0.8 * min(tz.a, tz.b) + 1.5)
        les = StarShape(cx=tz.cx + rr * tz.a * np.cos(t), cz=tz.cz + rr * tz.b * np.sin(t), a=rad,
                        b=rad * rng.uniform(0.8, 1.0))
        dl = les.signed_distance(x, z)
        sc.paint(smoothstep_inside(dl, 0.1), rng.uniform(-5.0, 3.0) + 1.5 * smooth_field(shape, 2, rng))
        sc.add_db(band(dl, -0.1, 0.3, 0.06), rng.uniform(3.0, 5.0))
        return les
    angle = desc["_angle"]
    rad = rng.uniform(2.0, 5.0)
    r_edge = float(gland.radius(np.float32(angle - gland.rot)))
    depth_in = rad * rng.uniform(0.6, 1.0) + 0.5
    cx = gland.cx + (r_edge - depth_in) * np.cos(angle)
    cz = gland.cz + (r_edge - depth_in) * np.sin(angle)
    les = StarShape(cx=cx, cz=cz, a=rad * rng.uniform(1.0, 1.6), b=rad, rot=float(angle + np.pi / 2),
                    harmonics=np.asarray([(3, rng.uniform(0.05, 0.12), rng.uniform(0, 6.3)),
                                          (5, rng.uniform(0.03, 0.08), rng.uniform(0, 6.3))], np.float32))
    echo = rng.uniform(-11.0, -7.0) if kind == "pz_hypoechoic" else rng.uniform(-3.0, -1.5)
    w = smoothstep_inside(les.signed_distance(x, z), rng.uniform(0.5, 0.9)) * smoothstep_inside(
        gland.signed_distance(x, z), 0.2)
    sc.paint(w, echo + 2.0 * smooth_field(shape, 2, rng))
    return les


def _calcifications(sc: Scene, desc: dict, tz: StarShape, rng: np.random.Generator) -> None:
    """Corpora amylacea along the surgical capsule: bright points, or a shadowing arc."""
    x, z = sc.xz
    kind = desc["calcification"]
    if kind == "scattered":
        for _ in range(int(rng.integers(3, 10))):
            t = rng.uniform(-np.pi, np.pi)
            rr = rng.uniform(0.9, 1.1)
            sc.add_point(tz.cx + rr * tz.a * np.cos(t), tz.cz + rr * tz.b * np.sin(t), rng.uniform(*CALC_DB))
    elif kind == "shadowing":
        t = rng.uniform(-np.pi, 0.0)
        px, pz = tz.cx + tz.a * np.cos(t), tz.cz + tz.b * np.sin(t)
        calc = StarShape(cx=px, cz=pz, a=rng.uniform(1.0, 2.0), b=rng.uniform(0.5, 0.9),
                         rot=float(rng.uniform(-0.4, 0.4)))
        _calcified_arc(sc, calc.signed_distance(x, z), (z < pz).astype(np.float32))


def build_scene(desc: dict, rng: np.random.Generator, size: int) -> tuple[ConvexProbe, Scene, Receiver]:
    """Build a transverse prostate scene seen by an endocavity sector probe.

    Args:
        desc: Prostate descriptors from :func:`sample_descriptors`.
        rng: Random generator.
        size: Output image side in pixels.

    Returns:
        Probe, scene (on a coarse polar grid) and receiver settings.
    """
    g = _layout(rng, desc)
    probe = ConvexProbe(
        name="endocavity micro-US sector",
        f0_mhz=float(rng.uniform(20.0, 29.0)),
        depth_mm=float(g["depth"]),
        radius_mm=float(g["radius"]),
        span_deg=float(g["span"]),
        focus_mm=float(rng.uniform(0.4, 0.6) * g["depth"]),
        f_number=float(rng.uniform(1.8, 2.4)),
        bandwidth=float(rng.uniform(0.6, 0.8)),
    )
    rx = Receiver.sample(rng, TISSUE_ALPHA)
    sc = Scene.empty(make_beam_grid(probe, size).coarse(2), FAT_DB, 0.12)
    # Lesion position along the posterior and lateral peripheral zone (toward the probe, angles in [-pi, 0]).
    desc = {**desc, "_angle": float(-np.pi / 2 + rng.uniform(-1.1, 1.1))}
    gland = _gland_shape(g, desc, desc["_angle"], rng)
    g["f0"] = probe.f0_mhz
    _surroundings(sc, g, gland, rng)
    _periprostatic_cuff(sc, gland, rng)
    sc.ref = _gland(sc, g, desc, gland, rng)
    _edge_shadows(sc, g, gland, rng)
    _degrade(sc, g, gland, rng)
    _rectal_wall(sc, g)
    sc.lesions.append(gland)
    return probe, sc, rx


PROSTATE = Preset(
    name="prostate",
    class_names=CLASS_NAMES,
    class_probs=(1.0,),
    prefix="synprostate",
    dataset_name="SynProstate",
    sample_descriptors=sample_descriptors,
    build_scene=build_scene,
    caption=prostate_caption,
    tasks=("segmentation",),
    seed_salt=201,
)
