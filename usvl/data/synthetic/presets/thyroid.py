"""Thyroid preset (TN3K/DDTI-like, transverse view) with ACR TI-RADS descriptors."""

from __future__ import annotations

import numpy as np

# The ACR TI-RADS table and scoring live in usvl.lexicon.tirads; POINTS stays importable from here.
from usvl.lexicon.tirads import POINTS, tirads_category, tirads_points  # noqa: F401

from ..captions import thyroid_caption
from ..physics import Receiver
from ..probe import BeamGrid, LinearProbe, make_beam_grid
from ..scene import Scene, band, smoothstep_inside
from ..shapes import StarShape
from .base import Preset, choose, line_band, probe_and_receiver, smooth_field

CLASS_NAMES = ("benign", "malignant")

# Class-conditional lexicon tables (deliberate overlap).
# Echogenicity applies to non-cystic, non-spongiform nodules.
COMPOSITION = {
    "benign": {"cystic": 0.03, "spongiform": 0.04, "mixed": 0.42, "solid": 0.51},
    "malignant": {"cystic": 0.0, "spongiform": 0.0, "mixed": 0.08, "solid": 0.92},
}
ECHOGENICITY = {
    "benign": {"hyperechoic": 0.11, "isoechoic": 0.54, "hypoechoic": 0.32, "very_hypoechoic": 0.03},
    "malignant": {"hyperechoic": 0.01, "isoechoic": 0.11, "hypoechoic": 0.58, "very_hypoechoic": 0.30},
}
SHAPE = {
    "benign": {"wider_than_tall": 0.94, "taller_than_wide": 0.06},
    "malignant": {"wider_than_tall": 0.62, "taller_than_wide": 0.38},
}
MARGIN = {
    "benign": {
        "smooth": 0.66,
        "ill_defined": 0.24,
        "lobulated_irregular": 0.09,
        "extrathyroidal_extension": 0.01,
    },
    "malignant": {
        "smooth": 0.24,
        "ill_defined": 0.22,
        "lobulated_irregular": 0.44,
        "extrathyroidal_extension": 0.10,
    },
}
FOCI = {
    "benign": {"none": 0.66, "comet_tail": 0.16, "macrocalcification": 0.12, "rim": 0.04, "punctate": 0.02},
    "malignant": {
        "none": 0.44,
        "comet_tail": 0.02,
        "macrocalcification": 0.16,
        "rim": 0.07,
        "punctate": 0.31,
    },
}

ECHO_DB = {
    "anechoic": -42.0,
    "hyperechoic": 5.0,
    "isoechoic": 0.0,
    "hypoechoic": -7.5,
    "very_hypoechoic": -16.0,
}
MUSCLE_DB = -11.0


def sample_descriptors(label: str, rng: np.random.Generator) -> dict:
    """Draw TI-RADS descriptors from the class-conditional tables, with coherence rules.

    Cystic nodules are anechoic, smooth and wider-than-tall; spongiform nodules are isoechoic and smooth.
    """
    comp = choose(COMPOSITION[label], rng)
    echo = choose(ECHOGENICITY[label], rng)
    shape = choose(SHAPE[label], rng)
    margin = choose(MARGIN[label], rng)
    foci = choose(FOCI[label], rng)
    if comp in ("cystic", "spongiform"):
        echo = "anechoic" if comp == "cystic" else "isoechoic"
        shape, margin = "wider_than_tall", "smooth"
        foci = foci if foci in ("none", "comet_tail") else "none"
    d = {"composition": comp, "echogenicity": echo, "shape": shape, "margin": margin, "echogenic_foci": foci}
    d["tirads_points"] = tirads_points(d)
    d["tirads_category"] = tirads_category(d["tirads_points"])
    return d


# ----------------------------------------------------------------------------------------- scene building


def _lesion_shape(desc: dict, rng: np.random.Generator, cx: float, cz: float, diam: float) -> StarShape:
    """Nodule outline from shape and margin descriptors; ``diam`` is the transverse diameter (mm)."""
    a = diam / 2.0
    ratio = rng.uniform(1.15, 1.5) if desc["shape"] == "taller_than_wide" else rng.uniform(0.55, 0.85)
    harm = [
        (2, rng.uniform(0.0, 0.03), rng.uniform(0, 6.3)),
        (3, rng.uniform(0.0, 0.025), rng.uniform(0, 6.3)),
    ]
    corners: list[tuple[float, float, float]] = []
    if desc["margin"] in ("lobulated_irregular", "extrathyroidal_extension"):
        for k in rng.choice(np.arange(3, 8), size=2, replace=False):
            harm.append((float(k), rng.uniform(0.07, 0.14), rng.uniform(0, 6.3)))
        for _ in range(int(rng.integers(2, 5))):
            corners.append((rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 0.4), rng.uniform(0.12, 0.25)))
    if desc["margin"] == "extrathyroidal_extension":
        corners.append((-np.pi / 2 + rng.uniform(-0.4, 0.4), rng.uniform(0.5, 0.8), rng.uniform(0.35, 0.5)))
    return StarShape(
        cx=cx,
        cz=cz,
        a=a,
        b=a * ratio,
        rot=float(rng.uniform(-0.12, 0.12)),
        harmonics=np.asarray(harm, np.float32),
        corners=np.asarray(corners, np.float32).reshape(-1, 3),
    )


def _layout(rng: np.random.Generator, desc: dict) -> dict:
    """Draw anatomy geometry and lesion size/position (nuisances, class-independent)."""
    g = {"side": float(rng.choice([-1.0, 1.0])), "skin": rng.uniform(1.0, 1.8), "fat": rng.uniform(1.2, 3.5)}
    g["strap"] = rng.uniform(2.5, 4.5)
    g["diam"] = rng.uniform(7.0, 15.0)
    ratio = 1.33 if desc["shape"] == "taller_than_wide" else 0.7
    g["lobe_a"] = max(rng.uniform(10.0, 14.0), g["diam"] / 2 + 3.5)
    g["lobe_b"] = max(rng.uniform(7.0, 10.0), g["diam"] * ratio / 2 + 2.5)
    g["top"] = g["skin"] + g["fat"] + g["strap"]
    g["depth"] = max(rng.uniform(30.0, 42.0), g["top"] + 2 * g["lobe_b"] + 7.0)
    g["lobe_cx"] = -g["side"] * rng.uniform(0.0, 0.12) * g["depth"]
    g["lobe_cz"] = g["top"] + g["lobe_b"]
    return g


def _soft_tissue(sc: Scene, g: dict, rng: np.random.Generator) -> None:
    """Skin, subcutaneous fat with septa, strap muscles with fibre lines, deep tissue."""
    x, z = sc.xz
    sc.paint(smoothstep_inside(z - g["skin"], 0.15), 5.0)
    fat_w = smoothstep_inside(g["skin"] - z, 0.15) * smoothstep_inside(z - g["skin"] - g["fat"], 0.2)
    sc.paint(fat_w, -8.0 + 1.5 * smooth_field(sc.echo_db.shape, 6, rng))
    z0 = g["skin"] + g["fat"]
    strap = smoothstep_inside(z0 - z, 0.2) * smoothstep_inside(z - g["top"], 0.25)
    sc.paint(strap, MUSCLE_DB, 0.9)
    for _ in range(int(rng.integers(2, 5))):
        zz = rng.uniform(z0 + 0.4, g["top"] - 0.3)
        sc.add_db(strap * line_band(z, x, zz, rng.uniform(-0.05, 0.05), 0.08, 0.06), 7.0)
    sc.add_db(line_band(z, x, z0, rng.uniform(-0.03, 0.03), 0.1, 0.08), 6.0)


def _thyroid_lobe(sc: Scene, g: dict, rng: np.random.Generator) -> StarShape:
    """Thyroid lobe (reference parenchyma) with a thin specular capsule."""
    x, z = sc.xz
    lobe = StarShape(
        cx=g["lobe_cx"],
        cz=g["lobe_cz"],
        a=g["lobe_a"],
        b=g["lobe_b"],
        rot=float(rng.uniform(-0.1, 0.1)),
        harmonics=np.asarray(
            [(2, rng.uniform(0, 0.05), rng.uniform(0, 6.3)), (3, rng.uniform(0, 0.04), rng.uniform(0, 6.3))],
            np.float32,
        ),
    )
    d = lobe.signed_distance(x, z)
    sc.paint(smoothstep_inside(d, 0.15), 1.2 * smooth_field(sc.echo_db.shape, 4, rng), 0.5)
    spec = 0.35 + 0.65 * lobe.radial_cos(x, z) ** 2
    sc.add_db(band(d, 0.0, 0.35, 0.07) * spec, 7.0)
    return lobe


def _vessels_and_muscle(sc: Scene, g: dict, rng: np.random.Generator) -> None:
    """Carotid (anechoic, bright wall, enhancement), jugular vein and longus colli."""
    x, z = sc.xz
    side = g["side"]
    lc = StarShape(
        cx=g["lobe_cx"] - side * g["lobe_a"] * 0.2,
        cz=g["lobe_cz"] + g["lobe_b"] + 3.0,
        a=rng.uniform(5, 8),
        b=rng.uniform(2.5, 3.5),
    )
    sc.paint(smoothstep_inside(lc.signed_distance(x, z), 0.3), MUSCLE_DB + 2.0, 0.9)
    rc = rng.uniform(3.0, 4.2)
    car = StarShape(
        cx=g["lobe_cx"] + side * (g["lobe_a"] * 0.85 + rc), cz=g["lobe_cz"] + rng.uniform(-1, 3), a=rc, b=rc
    )
    dc = car.signed_distance(x, z)
    sc.add_db(band(dc, 0.0, 0.5, 0.08), 6.0)
    sc.paint(smoothstep_inside(dc, 0.1), -45.0, 0.05)
    jug = StarShape(
        cx=car.cx + side * rng.uniform(2.0, 5.0),
        cz=car.cz - rc - rng.uniform(0.0, 1.5),
        a=rng.uniform(3.0, 6.0),
        b=rng.uniform(1.2, 2.8),
        rot=float(rng.uniform(-0.3, 0.3)),
    )
    sc.paint(smoothstep_inside(jug.signed_distance(x, z), 0.1), -45.0, 0.05)


def _trachea(sc: Scene, g: dict, rng: np.random.Generator) -> None:
    """Trachea: cartilage ring, bright air interface, complete shadow and reverberation arcs."""
    x, z = sc.xz
    r = rng.uniform(8.0, 11.0)
    cx = g["lobe_cx"] - g["side"] * (g["lobe_a"] + r * rng.uniform(0.55, 0.8))
    cz = g["top"] + rng.uniform(0.5, 2.5) + r
    tr = StarShape(cx=cx, cz=cz, a=r, b=r)
    d = tr.signed_distance(x, z)
    front = (z < cz).astype(np.float32)
    sc.paint(band(d, -2.0, 0.0, 0.12) * front, -14.0, 0.9)
    air = smoothstep_inside(d + 2.0, 0.05)
    sc.add_db(band(d, -2.3, -2.0, 0.05) * front, 22.0)
    sc.paint(air * front, -20.0, 80.0)
    gap = rng.uniform(2.2, 3.5)
    for k in range(1, 6):
        sc.add_reverb(band(d, -2.3 - k * gap, -2.0 - k * gap, 0.06) * front, -4.0 - 4.0 * k)


def _reference_weight(sc: Scene, lobe: StarShape, lesion: StarShape) -> None:
    """Background reference tissue: lobe parenchyma away from the nodule and its posterior column."""
    x, z = sc.xz
    inside = lobe.signed_distance(x, z) < -0.8
    far = lesion.signed_distance(x, z) > 1.5
    r = lesion.extent() + 1.0
    column = (np.abs(x - lesion.cx) < r) & (z > lesion.cz)
    sc.ref = (inside & far & ~column).astype(np.float32)


def _composition(
    sc: Scene, desc: dict, les: StarShape, w: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Paint solid/cystic content and return the cystic-fraction weight inside the nodule."""
    shape = sc.echo_db.shape
    comp = desc["composition"]
    solid_db = ECHO_DB[desc["echogenicity"]] + rng.uniform(-1.0, 1.0)
    hetero = rng.uniform(1.0, 2.5) * smooth_field(shape, 3, rng)
    sc.paint(w, solid_db + hetero, 0.6)
    if comp == "solid":
        return np.zeros(shape, np.float32)
    if comp == "cystic":
        cyst = w
    else:
        sig, frac = (1.0, 0.45) if comp == "spongiform" else (rng.uniform(3.0, 5.0), rng.uniform(0.3, 0.6))
        f = smooth_field(shape, sig, rng)
        inner = smoothstep_inside(les.signed_distance(*sc.xz) + 1.0, 0.2)
        cyst = smoothstep_inside(np.float32(np.quantile(f[w > 0.5], frac)) - f, 0.15) * inner * w
    sc.paint(cyst, -42.0, 0.1)
    return cyst


def _foci(sc: Scene, desc: dict, les: StarShape, rng: np.random.Generator) -> None:
    """Echogenic foci: punctate dots, comet tails, macrocalcification or rim with shadows."""
    foci = desc["echogenic_foci"]
    x, z = sc.xz
    if foci == "punctate":
        for _ in range(int(rng.integers(5, 13))):
            t, rr = rng.uniform(-np.pi, np.pi), np.sqrt(rng.uniform(0, 0.55))
            sc.add_point(
                les.cx + rr * les.a * np.cos(t), les.cz + rr * les.b * np.sin(t), rng.uniform(26, 32)
            )
    elif foci == "comet_tail":
        for _ in range(int(rng.integers(1, 4))):
            px, pz = les.cx + rng.uniform(-0.5, 0.5) * les.a, les.cz + rng.uniform(-0.6, 0.2) * les.b
            for k in range(int(rng.integers(5, 9))):
                sc.add_point(px, pz + 0.22 * k, 30.0 - 3.0 * k)
    elif foci == "macrocalcification":
        rad = rng.uniform(0.7, 1.4)
        calc = StarShape(
            cx=les.cx + rng.uniform(-0.4, 0.4) * les.a,
            cz=les.cz + rng.uniform(-0.4, 0.3) * les.b,
            a=rad * rng.uniform(1.0, 1.5),
            b=rad,
            rot=float(rng.uniform(-0.5, 0.5)),
        )
        _calcified_arc(sc, calc.signed_distance(x, z), (z < calc.cz + 0.3 * rad).astype(np.float32))
    elif foci == "rim":
        ang = np.arctan2(z - les.cz, x - les.cx)
        centre, span = -np.pi / 2 + rng.uniform(-0.8, 0.8), rng.uniform(0.35, 0.7)
        arc = (np.abs(np.angle(np.exp(1j * (ang - centre)))) < span).astype(np.float32)
        _calcified_arc(sc, les.signed_distance(x, z), arc)


def _calcified_arc(sc: Scene, d: np.ndarray, sector: np.ndarray) -> None:
    """Bright calcified front (d in [-0.35, 0] mm) followed by a strongly attenuating layer (shadow)."""
    sc.add_db(band(d, -0.35, 0.0, 0.06) * sector, 24.0)
    sc.add_alpha(band(d, -0.9, -0.3, 0.06) * sector, 30.0)


def _nodule(sc: Scene, desc: dict, g: dict, lobe: StarShape, rng: np.random.Generator) -> StarShape:
    """Place and render the nodule; returns its outline (the mask shape)."""
    ratio = 1.33 if desc["shape"] == "taller_than_wide" else 0.7
    a, b = g["diam"] / 2, g["diam"] * ratio / 2
    cx = lobe.cx + g["side"] * rng.uniform(-0.3, 1.0) * max(lobe.a - a - 2.5, 0.0)
    if desc["margin"] == "extrathyroidal_extension":
        cz = g["top"] + b * rng.uniform(0.75, 0.95)
    else:
        cz = lobe.cz + rng.uniform(-1, 1) * max(lobe.b - b - 2.0, 0.0)
    les = _lesion_shape(desc, rng, cx, cz, g["diam"])
    soft = {"smooth": 0.07, "ill_defined": rng.uniform(0.6, 0.9)}.get(desc["margin"], 0.12)
    x, z = sc.xz
    d = les.signed_distance(x, z)
    w = smoothstep_inside(d, soft)
    _composition(sc, desc, les, w, rng)
    if desc["margin"] == "smooth" and desc["composition"] != "spongiform":
        sc.add_db(band(d, -0.1, 0.3, 0.06) * (0.3 + 0.7 * les.radial_cos(x, z) ** 2), rng.uniform(4.0, 7.0))
    _foci(sc, desc, les, rng)
    return les


def build_scene(desc: dict, rng: np.random.Generator, size: int) -> tuple[LinearProbe, Scene, Receiver]:
    """Build the thyroid scene; geometry and settings are class-independent nuisances.

    Args:
        desc: Thyroid descriptors from :func:`sample_descriptors`.
        rng: Random generator.
        size: Output image side in pixels.

    Returns:
        Probe, scene (on a coarse grid) and receiver settings.
    """
    g = _layout(rng, desc)
    probe, rx = probe_and_receiver(rng, "L12-5", (7.5, 13.0), g["depth"], 0.5)
    grid: BeamGrid = make_beam_grid(probe, size).coarse(2)
    sc = Scene.empty(grid, -5.0, 0.6)
    sc.add_db(np.ones_like(sc.echo_db), 1.5 * smooth_field(sc.echo_db.shape, 8, rng))
    _soft_tissue(sc, g, rng)
    lobe = _thyroid_lobe(sc, g, rng)
    _vessels_and_muscle(sc, g, rng)
    les = _nodule(sc, desc, g, lobe, rng)
    _trachea(sc, g, rng)
    _reference_weight(sc, lobe, les)
    sc.lesions.append(les)
    return probe, sc, rx


THYROID = Preset(
    name="thyroid",
    class_names=CLASS_NAMES,
    class_probs=(0.5, 0.5),
    prefix="synthyroid",
    dataset_name="SynThyroid",
    sample_descriptors=sample_descriptors,
    build_scene=build_scene,
    caption=thyroid_caption,
)
