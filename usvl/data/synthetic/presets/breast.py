"""Breast preset (BUSI-like) with BI-RADS mass descriptors; classes benign / malignant / normal."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..captions import breast_caption
from ..physics import Receiver
from ..probe import LinearProbe, make_beam_grid
from ..scene import Scene, band, smoothstep_inside
from ..shapes import StarShape
from .base import Preset, choose, line_band, probe_and_receiver, smooth_field

CLASS_NAMES = ("benign", "malignant", "normal")

TABLES = {
    "shape": {
        "benign": {"oval": 0.62, "round": 0.18, "irregular": 0.20},
        "malignant": {"oval": 0.12, "round": 0.13, "irregular": 0.75},
    },
    "orientation": {
        "benign": {"parallel": 0.85, "not_parallel": 0.15},
        "malignant": {"parallel": 0.45, "not_parallel": 0.55},
    },
    "margin": {
        "benign": {
            "circumscribed": 0.60,
            "indistinct": 0.16,
            "angular": 0.06,
            "microlobulated": 0.12,
            "spiculated": 0.06,
        },
        "malignant": {
            "circumscribed": 0.08,
            "indistinct": 0.30,
            "angular": 0.17,
            "microlobulated": 0.17,
            "spiculated": 0.28,
        },
    },
    "echo_pattern": {
        "benign": {
            "anechoic": 0.22,
            "hypoechoic": 0.45,
            "isoechoic": 0.15,
            "complex": 0.10,
            "hyperechoic": 0.03,
            "heterogeneous": 0.05,
        },
        "malignant": {
            "anechoic": 0.0,
            "hypoechoic": 0.62,
            "isoechoic": 0.05,
            "complex": 0.10,
            "hyperechoic": 0.0,
            "heterogeneous": 0.23,
        },
    },
    "posterior": {
        "benign": {"enhancement": 0.40, "none": 0.45, "shadowing": 0.10, "combined": 0.05},
        "malignant": {"enhancement": 0.18, "none": 0.30, "shadowing": 0.45, "combined": 0.07},
    },
    "calcification": {
        "benign": {"none": 0.85, "micro": 0.05, "macro": 0.10},
        "malignant": {"none": 0.55, "micro": 0.38, "macro": 0.07},
    },
}

ECHO_DB = {
    "anechoic": -42.0,
    "hypoechoic": -13.0,
    "isoechoic": -2.0,
    "complex": -10.0,
    "hyperechoic": 5.0,
    "heterogeneous": -9.0,
}
POSTERIOR_ALPHA = {
    "enhancement": (0.3, 0.45),
    "none": (0.65, 0.85),
    "shadowing": (1.0, 1.6),
    "combined": (0.3, 0.5),
}
TISSUE_ALPHA = 0.75
CALC_DB = (18.0, 24.0)  # point-reflector amplitude of microcalcifications and glints (bright, not saturating)


OVERLAP = 0.1  # mixes each class table toward the pooled table; raises class overlap (ceiling AUC knob)


def _table(key: str, label: str) -> dict[str, float]:
    """Class-conditional table blended with the pooled (mean) table by ``OVERLAP``."""
    tabs = TABLES[key]
    pooled = {v: float(np.mean([tabs[c][v] for c in tabs])) for v in tabs[label]}
    return {v: (1 - OVERLAP) * p + OVERLAP * pooled[v] for v, p in tabs[label].items()}


def sample_descriptors(label: str, rng: np.random.Generator) -> dict:
    """Draw BI-RADS descriptors from the class-conditional tables (normal: no finding).

    Anechoic masses are forced to a simple-cyst picture: oval or round, circumscribed, enhancement.
    """
    if label == "normal":
        return {"finding": "none"}
    d = {"finding": "mass"}
    for key in TABLES:
        d[key] = choose(_table(key, label), rng)
    if d["echo_pattern"] == "anechoic":
        d["shape"] = d["shape"] if d["shape"] != "irregular" else "oval"
        d["margin"], d["posterior"], d["calcification"] = "circumscribed", "enhancement", "none"
    return d


def _layout(rng: np.random.Generator) -> dict:
    """Layer depths, lesion size and position, rib presence (class-independent nuisances)."""
    g = {"skin": rng.uniform(1.2, 2.2)}
    g["fat"] = g["skin"] + rng.uniform(3.0, 8.0)
    g["gland"] = g["fat"] + rng.uniform(11.0, 20.0)
    g["retro"] = g["gland"] + rng.uniform(1.5, 3.5)
    g["depth"] = max(rng.uniform(30.0, 45.0), g["retro"] + 10.0)
    g["diam"] = rng.uniform(7.0, 18.0)
    g["rib"] = bool(rng.uniform() < 0.3)
    g["ligament_shadows"] = int(rng.choice([0, 0, 1, 2]))
    g["glints"] = int(rng.choice([0, 0, 2, 4, 6, 8, 10, 12]))
    return g


def _wavy(x: np.ndarray, z0: float, amp: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth wavy boundary depth z0 + amp * sum of sinusoids, shape of ``x``."""
    out = np.full_like(x, z0)
    for _ in range(3):
        out = out + amp * np.sin(x * rng.uniform(0.05, 0.3) + rng.uniform(0, 6.3)).astype(np.float32) / 2
    return out


def _layers(sc: Scene, g: dict, rng: np.random.Generator) -> np.ndarray:
    """Skin, fat with Cooper ligaments, gland with fat islands, retromammary fat, fascia, pectoralis.

    Returns:
        Weight of the glandular layer.
    """
    x, z = sc.xz
    shape = sc.echo_db.shape
    zf, zg = _wavy(x, g["fat"], 2.0, rng), _wavy(x, g["gland"], 2.5, rng)
    sc.paint(smoothstep_inside(z - g["skin"], 0.15), 6.0)
    fat = smoothstep_inside(g["skin"] - z, 0.15) * smoothstep_inside(z - zf, 0.4)
    sc.paint(fat, -9.0 + 1.5 * smooth_field(shape, 6, rng))
    for _ in range(int(rng.integers(2, 5))):
        lig = line_band(
            z, x - rng.uniform(-20, 20), g["skin"] + 1, rng.choice([-1, 1]) * rng.uniform(0.3, 0.9), 0.1, 0.08
        )
        sc.add_db(lig * smoothstep_inside(z - zg, 0.5) * (z > g["skin"]), 9.0)
    gland = smoothstep_inside(zf - z, 0.4) * smoothstep_inside(z - zg, 0.5)
    sc.paint(gland, 2.0 * smooth_field(shape, 5, rng), TISSUE_ALPHA)
    for _ in range(int(rng.integers(2, 6))):
        isl = StarShape(
            cx=rng.uniform(-g["depth"] / 2, g["depth"] / 2),
            cz=rng.uniform(g["fat"], g["gland"]),
            a=rng.uniform(2.0, 5.0),
            b=rng.uniform(1.2, 3.0),
            rot=float(rng.uniform(-0.4, 0.4)),
        )
        sc.paint(smoothstep_inside(isl.signed_distance(x, z), 0.5) * gland, -9.0)
    retro = smoothstep_inside(zg - z, 0.4) * smoothstep_inside(z - g["retro"], 0.2)
    sc.paint(retro, -9.0)
    sc.add_db(line_band(z, x, g["retro"], 0.0, 0.15, 0.08), 9.0)
    pec = smoothstep_inside(g["retro"] + 0.3 - z, 0.2)
    sc.paint(pec, -6.0, 0.9)
    slope = rng.uniform(-0.25, 0.25)
    for _ in range(int(rng.integers(3, 7))):
        sc.add_db(pec * line_band(z, x, rng.uniform(g["retro"] + 1, g["depth"]), slope, 0.08, 0.06), 7.0)
    return gland


def _rib(sc: Scene, g: dict, rng: np.random.Generator) -> None:
    """Rib with a bright anterior surface and a complete acoustic shadow."""
    x, z = sc.xz
    rib = StarShape(
        cx=rng.uniform(-0.35, 0.35) * g["depth"],
        cz=g["retro"] + rng.uniform(5.0, 8.0),
        a=rng.uniform(5.0, 7.0),
        b=rng.uniform(3.0, 4.0),
    )
    d = rib.signed_distance(x, z)
    front = (z < rib.cz).astype(np.float32)
    sc.add_db(band(d, -0.4, 0.0, 0.06) * front, 20.0)
    sc.add_alpha(band(d, -1.2, -0.35, 0.08) * front, 40.0)


def _ligament_shadows(sc: Scene, g: dict, rng: np.random.Generator) -> None:
    """Class-independent posterior shadows from Cooper ligaments (mimics of mass shadowing)."""
    x, z = sc.xz
    for _ in range(g["ligament_shadows"]):
        lig = StarShape(
            cx=rng.uniform(-0.45, 0.45) * g["depth"],
            cz=rng.uniform(g["skin"] + 1.0, g["fat"]),
            a=rng.uniform(1.0, 4.0),
            b=rng.uniform(0.4, 0.8),
            rot=float(rng.uniform(-0.3, 0.3)),
        )
        w = smoothstep_inside(lig.signed_distance(x, z), 0.2)
        sc.add_db(w, 6.0)
        sc.add_alpha(w, rng.uniform(4.0, 10.0))


def _glints(sc: Scene, g: dict, les: StarShape | None, rng: np.random.Generator) -> None:
    """Class-independent specular point reflectors (ligament / duct-wall glints, benign calcific foci).

    Drawn at a fixed, class-independent rate with the same amplitude range as microcalcifications and
    kept 1 mm outside the mass, so the bright tail of the grey-level histogram does not reveal
    malignancy while calcifications inside a mass stay a distinct cue.
    """
    n = 0
    for _ in range(4 * g["glints"]):
        if n == g["glints"]:
            break
        px, pz = rng.uniform(-0.45, 0.45) * g["depth"], rng.uniform(g["skin"] + 1.0, g["gland"])
        amp = rng.uniform(*CALC_DB)
        if les is not None and float(les.signed_distance(np.float32(px), np.float32(pz))) < 1.0:
            continue
        sc.add_point(px, pz, amp)
        n += 1


def _lesion_shape(d: dict, g: dict, rng: np.random.Generator) -> StarShape:
    """Mass outline from shape, orientation and margin descriptors."""
    ratio = {
        "oval": rng.uniform(1.4, 2.0),
        "round": rng.uniform(1.0, 1.15),
        "irregular": rng.uniform(1.0, 1.6),
    }
    a = g["diam"] / 2
    b = a / ratio[d["shape"]]
    rot = rng.uniform(-0.25, 0.25) + (np.pi / 2 if d["orientation"] == "not_parallel" else 0.0)
    harm = [(2, rng.uniform(0, 0.03), rng.uniform(0, 6.3))]
    corners, spic = [], []
    if d["shape"] == "irregular":
        for k in rng.choice(np.arange(3, 7), size=2, replace=False):
            harm.append((float(k), rng.uniform(0.08, 0.15), rng.uniform(0, 6.3)))
    if d["margin"] == "angular":
        corners = [
            (rng.uniform(-np.pi, np.pi), rng.uniform(0.15, 0.3), rng.uniform(0.2, 0.35))
            for _ in range(int(rng.integers(3, 6)))
        ]
    elif d["margin"] == "microlobulated":
        for k in rng.choice(np.arange(10, 17), size=2, replace=False):
            harm.append((float(k), rng.uniform(0.035, 0.06), rng.uniform(0, 6.3)))
    elif d["margin"] == "spiculated":
        spic = [
            (rng.uniform(-np.pi, np.pi), rng.uniform(0.04, 0.08), rng.uniform(0.25, 0.6))
            for _ in range(int(rng.integers(8, 17)))
        ]
    cz = rng.uniform(g["fat"] + 0.4 * b, g["gland"] - 0.2 * b)
    return StarShape(
        cx=rng.uniform(-0.25, 0.25) * g["depth"],
        cz=cz,
        a=a,
        b=b,
        rot=float(rot),
        harmonics=np.asarray(harm, np.float32),
        corners=np.asarray(corners, np.float32).reshape(-1, 3),
        spicules=np.asarray(spic, np.float32).reshape(-1, 3),
    )


def _render_mass(sc: Scene, d: dict, les: StarShape, rng: np.random.Generator) -> None:
    """Paint the mass interior, margin features, posterior pattern and calcifications."""
    x, z = sc.xz
    shape = sc.echo_db.shape
    dist = les.signed_distance(x, z)
    soft = {"circumscribed": 0.07, "indistinct": rng.uniform(0.6, 0.9)}.get(d["margin"], 0.12)
    w = smoothstep_inside(dist, soft)
    if d["margin"] == "spiculated":
        sc.add_db(band(dist, 0.0, 1.0, 0.3), rng.uniform(1.0, 2.5))
    tex = {"heterogeneous": 5.0, "complex": 2.0}.get(d["echo_pattern"], 1.5) * smooth_field(shape, 2.5, rng)
    lo, hi = POSTERIOR_ALPHA[d["posterior"]]
    sc.paint(w, ECHO_DB[d["echo_pattern"]] + rng.uniform(-2.0, 2.0) + tex, rng.uniform(lo, hi))
    if d["posterior"] == "combined":
        half = (x - les.cx) * rng.choice([-1.0, 1.0]) > 0
        sc.add_alpha(w * half, rng.uniform(0.7, 1.2))
    if d["echo_pattern"] == "complex":
        f = smooth_field(shape, 3.5, rng)
        cyst = smoothstep_inside(np.float32(np.quantile(f[w > 0.5], 0.5)) - f, 0.15) * smoothstep_inside(
            dist + 1.0, 0.2
        )
        sc.paint(cyst, -42.0, 0.3)
    if d["margin"] == "circumscribed" and d["echo_pattern"] != "anechoic":
        sc.add_db(
            band(dist, -0.1, 0.3, 0.06) * (0.3 + 0.7 * les.radial_cos(x, z) ** 2), rng.uniform(3.0, 6.0)
        )
    if d["calcification"] == "micro":
        for _ in range(int(rng.integers(4, 11))):
            t, rr = rng.uniform(-np.pi, np.pi), np.sqrt(rng.uniform(0, 0.5))
            sc.add_point(
                les.cx + rr * les.a * np.cos(t), les.cz + rr * les.b * np.sin(t), rng.uniform(*CALC_DB)
            )
    elif d["calcification"] == "macro":
        rad = rng.uniform(0.7, 1.4)
        calc = StarShape(
            cx=les.cx + rng.uniform(-0.3, 0.3) * les.a,
            cz=les.cz + rng.uniform(-0.3, 0.3) * les.b,
            a=rad * 1.3,
            b=rad,
        )
        dc = calc.signed_distance(x, z)
        front = (z < calc.cz).astype(np.float32)
        sc.add_db(band(dc, -0.35, 0.0, 0.06) * front, 24.0)
        sc.add_alpha(band(dc, -0.9, -0.3, 0.06) * front, 30.0)


def build_scene(desc: dict, rng: np.random.Generator, size: int) -> tuple[LinearProbe, Scene, Receiver]:
    """Build the breast scene; geometry and settings are class-independent nuisances.

    Args:
        desc: Breast descriptors from :func:`sample_descriptors`.
        rng: Random generator.
        size: Output image side in pixels.

    Returns:
        Probe, scene (on a coarse grid) and receiver settings.
    """
    g = _layout(rng)
    probe, rx = probe_and_receiver(rng, "L14-5", (7.0, 14.0), g["depth"], 0.7)
    rx = replace(rx, gain_target=float(rng.uniform(0.3, 0.55)), dynamic_range_db=float(rng.uniform(45.0, 65.0)))
    sc = Scene.empty(make_beam_grid(probe, size).coarse(2), -6.0, TISSUE_ALPHA)
    gland = _layers(sc, g, rng)
    les = _lesion_shape(desc, g, rng) if desc["finding"] == "mass" else None
    if g["rib"]:
        _rib(sc, g, rng)
    _ligament_shadows(sc, g, rng)
    _glints(sc, g, les, rng)
    x, z = sc.xz
    ref = gland > 0.5
    if les is not None:
        _render_mass(sc, desc, les, rng)
        sc.lesions.append(les)
        r = les.extent() + 1.0
        ref &= (les.signed_distance(x, z) > 1.5) & ~((np.abs(x - les.cx) < r) & (z > les.cz))
    sc.ref = ref.astype(np.float32)
    return probe, sc, rx


BREAST = Preset(
    name="breast",
    class_names=CLASS_NAMES,
    class_probs=(0.55, 0.27, 0.18),
    prefix="synbusi",
    dataset_name="SynBUSI",
    sample_descriptors=sample_descriptors,
    build_scene=build_scene,
    caption=breast_caption,
)
