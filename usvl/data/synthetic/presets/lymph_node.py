"""Cervical lymph-node presets (LN-INT / LN-EXT-like): benign vs metastatic nodes seen by two centres.

Both presets share one scene and label model; they differ only in how the images are acquired (the centre):
probe frequency, F-number and bandwidth (speckle size), imaging depth, dynamic range, gain, display gamma,
TGC style, noise floor and speckle-reduction smoothing. Training on ``ln-int`` and testing on ``ln-ext`` is the
synthetic twin of the NextGen-UIA cross-centre protocol (train LN-INT, test LN-EXT).

Label model (class -> descriptors, with deliberate overlap), following the usual sonographic criteria for
metastatic cervical nodes (loss of the echogenic hilum, round shape, eccentric cortical thickening, marked
hypoechogenicity or heterogeneity, cystic necrosis, microcalcifications, ill-defined margins):

* benign: long-to-short axis (L/S) ratio 1.8-3.2, fatty hilum present in 88 %, thin hypoechoic cortex,
  sharp margins;
* malignant: round in 80 % (L/S 1.0-1.9), no hilum in 88 %, markedly hypoechoic or heterogeneous, cystic
  necrosis 30 %, microcalcifications 20 %, indistinct margins 35 %.

Size is deliberately *not* a class cue: the node's area (equivalent diameter 7-14 mm) is drawn independently of
the class and the L/S ratio shapes it, so round (malignant) nodes have a longer short axis at the same area,
as in the clinical short-axis criterion, while the area alone does not separate the classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from ..captions import lymph_node_caption
from ..physics import Receiver
from ..probe import LinearProbe, make_beam_grid
from ..scene import Scene, band, smoothstep_inside
from ..shapes import StarShape
from .base import Preset, choose, line_band, smooth_field

CLASS_NAMES = ("benign", "malignant")

TABLES = {
    "hilum": {
        "benign": {"present": 0.75, "narrowed": 0.13, "absent": 0.12},
        "malignant": {"present": 0.04, "narrowed": 0.08, "absent": 0.88},
    },
    "cortex": {
        "benign": {"thin": 0.75, "concentric_thickening": 0.18, "eccentric_thickening": 0.07},
        "malignant": {"thin": 0.15, "concentric_thickening": 0.30, "eccentric_thickening": 0.55},
    },
    "echogenicity": {
        "benign": {"hypoechoic": 0.82, "markedly_hypoechoic": 0.06, "heterogeneous": 0.12},
        "malignant": {"hypoechoic": 0.28, "markedly_hypoechoic": 0.40, "heterogeneous": 0.32},
    },
    "necrosis": {
        "benign": {"none": 0.97, "cystic": 0.03},
        "malignant": {"none": 0.70, "cystic": 0.30},
    },
    "calcification": {
        "benign": {"none": 0.98, "micro": 0.02},
        "malignant": {"none": 0.80, "micro": 0.20},
    },
    "margin": {
        "benign": {"sharp": 0.93, "indistinct": 0.07},
        "malignant": {"sharp": 0.65, "indistinct": 0.35},
    },
}

OVERLAP = 0.25  # mixes each class table toward the pooled table; raises class overlap (ceiling AUC knob)
ROUND_BELOW = 2.0  # L/S ratio under which a node is called round

ECHO_DB = {"hypoechoic": -11.0, "markedly_hypoechoic": -17.0, "heterogeneous": -12.0}
TEXTURE_DB = {"hypoechoic": 1.2, "markedly_hypoechoic": 1.2, "heterogeneous": 4.5}
HILUM_DB = 3.0
MUSCLE_DB = -9.0
TISSUE_ALPHA = 0.6
CALC_DB = (20.0, 26.0)  # microcalcifications and class-independent glints share this amplitude range


@dataclass(frozen=True)
class Centre:
    """Acquisition settings of one centre: ranges that the per-image nuisances are drawn from.

    Attributes:
        name: Short centre name (``INT``, ``EXT``).
        probe: Probe name written to the metadata.
        f0_mhz: Centre-frequency range (MHz).
        f_number: F-number range (lateral speckle size).
        bandwidth: Fractional bandwidth range (axial speckle size).
        depth_mm: Imaging-depth range (mm); deeper fields make the node smaller in pixels.
        dynamic_range_db: Displayed dynamic range (dB); smaller means harsher contrast.
        gain_target: Grey level (0-1) of the median background fat.
        gamma: Display gamma range.
        tgc_tilt_db: Range of the TGC slider change from the top to the bottom of the image (dB);
            negative under-compensates the deep field.
        tgc_jitter_db: Per-slider random offset (dB).
        noise_db: Electronic noise range relative to the reference tissue (dB).
        smoothing_mm: Speckle-reduction smoothing (Gaussian sigma, mm) applied to the log image.
        focal_gain_db: Extra gain around the focus (dB).
    """

    name: str
    probe: str
    f0_mhz: tuple[float, float]
    f_number: tuple[float, float]
    bandwidth: tuple[float, float]
    depth_mm: tuple[float, float]
    dynamic_range_db: tuple[float, float]
    gain_target: tuple[float, float]
    gamma: tuple[float, float]
    tgc_tilt_db: tuple[float, float]
    tgc_jitter_db: float
    noise_db: tuple[float, float]
    smoothing_mm: tuple[float, float]
    focal_gain_db: tuple[float, float]


INT = Centre(
    name="INT",
    probe="L12-5 (centre INT)",
    f0_mhz=(9.0, 13.0),
    f_number=(1.7, 2.2),
    bandwidth=(0.65, 0.8),
    depth_mm=(28.0, 38.0),
    dynamic_range_db=(55.0, 65.0),
    gain_target=(0.36, 0.48),
    gamma=(0.95, 1.1),
    tgc_tilt_db=(-1.5, 1.5),
    tgc_jitter_db=2.5,
    noise_db=(-62.0, -55.0),
    smoothing_mm=(0.0, 0.0),
    focal_gain_db=(0.5, 2.0),
)
"""The internal centre: a high-frequency linear probe, wide dynamic range, flat TGC, no smoothing."""

EXT = Centre(
    name="EXT",
    probe="L9-4 (centre EXT)",
    f0_mhz=(6.5, 9.0),
    f_number=(2.3, 2.8),
    bandwidth=(0.52, 0.65),
    depth_mm=(30.0, 42.0),
    dynamic_range_db=(46.0, 54.0),
    gain_target=(0.46, 0.58),
    gamma=(1.1, 1.25),
    tgc_tilt_db=(-6.0, -3.0),
    tgc_jitter_db=1.5,
    noise_db=(-56.0, -50.0),
    smoothing_mm=(0.05, 0.12),
    focal_gain_db=(1.5, 3.0),
)
"""The external centre: lower frequency (coarser speckle), deeper field, harsher and brighter display, an
under-compensated deep field, a higher noise floor and speckle-reduction smoothing."""


def _table(key: str, label: str) -> dict[str, float]:
    """Class-conditional table blended with the pooled (mean) table by ``OVERLAP``."""
    tabs = TABLES[key]
    pooled = {v: float(np.mean([tabs[c][v] for c in tabs])) for v in tabs[label]}
    return {v: (1 - OVERLAP) * p + OVERLAP * pooled[v] for v, p in tabs[label].items()}


def _ls_ratio(label: str, rng: np.random.Generator) -> float:
    """Long-to-short axis ratio: benign 1.8-3.2; malignant round (1.0-1.9) in 80 %, else 1.9-2.8."""
    other = CLASS_NAMES[1 - CLASS_NAMES.index(label)]
    source = other if rng.uniform() < OVERLAP / 2 else label
    if source == "benign":
        return float(rng.uniform(1.8, 3.2))
    return float(rng.uniform(1.0, 1.9) if rng.uniform() < 0.8 else rng.uniform(1.9, 2.8))


def sample_descriptors(label: str, rng: np.random.Generator) -> dict:
    """Draw lymph-node descriptors from the class-conditional tables.

    A node without a hilum has no separate cortex: its cortex descriptor is ``diffuse``.

    Args:
        label: ``benign`` or ``malignant``.
        rng: Random generator.

    Returns:
        Descriptors: ``ls_ratio`` (float), ``shape`` and the categorical keys of ``TABLES``.
    """
    ratio = _ls_ratio(label, rng)
    d: dict = {"ls_ratio": round(ratio, 3), "shape": "round" if ratio < ROUND_BELOW else "oval"}
    for key in TABLES:
        d[key] = choose(_table(key, label), rng)
    if d["hilum"] == "absent":
        d["cortex"] = "diffuse"
    return d


# ----------------------------------------------------------------------------------------- scene building


def _layout(rng: np.random.Generator, desc: dict, centre: Centre) -> dict:
    """Layer depths, node size, orientation and position (class-independent nuisances)."""
    g = {"skin": rng.uniform(0.9, 1.6)}
    g["fat"] = g["skin"] + rng.uniform(1.5, 4.5)
    g["scm"] = g["fat"] + rng.uniform(3.0, 9.0)
    g["scm_db"] = MUSCLE_DB + rng.uniform(-7.0, 2.0)
    deq = rng.uniform(7.0, 14.0)
    g["a"] = deq * np.sqrt(desc["ls_ratio"]) / 2.0
    g["b"] = deq / np.sqrt(desc["ls_ratio"]) / 2.0
    g["rot"] = float(rng.uniform(-0.3, 0.3))
    c, s = abs(np.cos(g["rot"])), abs(np.sin(g["rot"]))
    half_z = float(np.hypot(g["a"] * s, g["b"] * c))
    half_x = float(np.hypot(g["a"] * c, g["b"] * s))
    g["depth"] = max(rng.uniform(*centre.depth_mm), g["scm"] + 2 * half_z + 10.0, 2 * half_x + 6.0)
    g["cz"] = g["scm"] + half_z + rng.uniform(1.0, 5.0)
    g["cx"] = rng.uniform(-1.0, 1.0) * max(g["depth"] / 2.0 - half_x - 2.0, 0.0)
    g["vessel"] = bool(rng.uniform() < 0.85)
    g["lobules"] = int(rng.integers(1, 6))
    g["glints"] = int(rng.choice([0, 0, 2, 4, 6, 8]))
    g["deep_muscle"] = bool(rng.uniform() < 0.6)
    return g


def _neck(sc: Scene, g: dict, rng: np.random.Generator) -> np.ndarray:
    """Skin, subcutaneous fat, sternocleidomastoid with fibre lines, neck fat with septa, deep muscle.

    Returns:
        Weight of the neck fat (the background reference tissue).
    """
    x, z = sc.xz
    shape = sc.echo_db.shape
    sc.paint(smoothstep_inside(z - g["skin"], 0.15), 6.0)
    sub = smoothstep_inside(g["skin"] - z, 0.15) * smoothstep_inside(z - g["fat"], 0.2)
    sc.paint(sub, -7.0 + 1.5 * smooth_field(shape, 6, rng))
    slope = rng.uniform(-0.08, 0.08)
    scm_bottom = g["scm"] + slope * x
    scm = smoothstep_inside(g["fat"] - z, 0.2) * smoothstep_inside(z - scm_bottom, 0.25)
    sc.paint(scm, g["scm_db"], 0.9)
    for _ in range(int(rng.integers(2, 5))):
        sc.add_db(scm * line_band(z, x, rng.uniform(g["fat"] + 0.5, g["scm"] - 0.3), slope, 0.08, 0.06), 7.0)
    sc.add_db(line_band(z, x, g["fat"], 0.0, 0.1, 0.08), 6.0)
    sc.add_db(line_band(z, x, g["scm"], slope, 0.12, 0.08), 7.0)
    fat = smoothstep_inside(scm_bottom - z, 0.25)
    sc.paint(fat, 2.0 * smooth_field(shape, 5, rng), TISSUE_ALPHA)
    for _ in range(int(rng.integers(2, 6))):
        septum = line_band(z, x - rng.uniform(-15, 15), rng.uniform(g["scm"], g["depth"]),
                           rng.uniform(-0.5, 0.5), 0.1, 0.08)
        sc.add_db(septum * fat * (x > rng.uniform(-20, 0)) * (x < rng.uniform(0, 20)), rng.uniform(5.0, 9.0))
    if g["deep_muscle"]:
        top = rng.uniform(0.65, 0.9) * g["depth"]
        deep = smoothstep_inside(top - z, 0.3)
        sc.paint(deep, MUSCLE_DB + rng.uniform(-7.0, 1.0), 0.9)
        sc.add_db(line_band(z, x, top, rng.uniform(-0.1, 0.1), 0.12, 0.08), 6.0)
        fat = fat * (1.0 - deep)
    return fat


def _node_shape(desc: dict, g: dict, rng: np.random.Generator) -> StarShape:
    """Node outline: an ellipse of the drawn L/S ratio; indistinct margins add low-order lobulation."""
    harm = [(2, rng.uniform(0.0, 0.03), rng.uniform(0, 6.3)), (3, rng.uniform(0.0, 0.03), rng.uniform(0, 6.3))]
    if desc["margin"] == "indistinct":
        for k in rng.choice(np.arange(4, 8), size=2, replace=False):
            harm.append((float(k), rng.uniform(0.03, 0.07), rng.uniform(0, 6.3)))
    return StarShape(cx=g["cx"], cz=g["cz"], a=g["a"], b=g["b"], rot=g["rot"],
                     harmonics=np.asarray(harm, np.float32))


def _hilum_shape(desc: dict, node: StarShape, rng: np.random.Generator) -> StarShape | None:
    """Echogenic fatty hilum inside the node, reaching its margin at the hilar notch (``None`` if absent).

    The cortex descriptor sets the hilum's short semi-axis (thin cortex: a wide hilum) and, for eccentric
    thickening, pushes the hilum toward one side of the node.
    """
    if desc["hilum"] == "absent":
        return None
    frac = {"thin": (0.5, 0.65), "concentric_thickening": (0.2, 0.35), "eccentric_thickening": (0.25, 0.4)}
    hb = node.b * rng.uniform(*frac[desc["cortex"]])
    ha = node.a * rng.uniform(0.6, 0.8)
    if desc["hilum"] == "narrowed":
        hb, ha = hb * 0.5, ha * 0.65
    side = float(rng.choice([-1.0, 1.0]))
    shift = side * (node.b - hb) * (rng.uniform(0.5, 0.8) if desc["cortex"] == "eccentric_thickening"
                                    else rng.uniform(0.0, 0.15))
    c, s = np.cos(node.rot), np.sin(node.rot)
    # The minor axis in the node frame is v; in image coordinates v points along (-sin, cos).
    cx, cz = node.cx - s * shift, node.cz + c * shift
    reach = (node.b - side * shift + 0.4) / hb - 1.0
    notch = (side * np.pi / 2, rng.uniform(0.25, 0.4), reach)
    return StarShape(cx=cx, cz=cz, a=ha, b=hb, rot=node.rot, corners=np.asarray([notch], np.float32))


def _render_node(sc: Scene, desc: dict, node: StarShape, rng: np.random.Generator) -> None:
    """Paint cortex, hilum, necrosis, calcifications and margin of the node."""
    x, z = sc.xz
    shape = sc.echo_db.shape
    dist = node.signed_distance(x, z)
    soft = 0.07 if desc["margin"] == "sharp" else rng.uniform(0.5, 0.8)
    w = smoothstep_inside(dist, soft)
    echo = desc["echogenicity"]
    tex = TEXTURE_DB[echo] * smooth_field(shape, 2.5, rng)
    sc.paint(w, ECHO_DB[echo] + rng.uniform(-1.5, 1.5) + tex, rng.uniform(0.3, 0.45))
    hilum = _hilum_shape(desc, node, rng)
    w_h = np.zeros(shape, np.float32)
    if hilum is not None:
        w_h = smoothstep_inside(hilum.signed_distance(x, z), 0.3) * w
        sc.paint(w_h, HILUM_DB + 1.5 * smooth_field(shape, 2.0, rng), TISSUE_ALPHA)
    if desc["necrosis"] == "cystic":
        f = smooth_field(shape, rng.uniform(2.0, 3.5), rng)
        inner = smoothstep_inside(dist + 1.0, 0.2) * (1.0 - w_h)
        sel = f[inner > 0.5]
        if sel.size:
            q = np.float32(np.quantile(sel, 1.0 - rng.uniform(0.15, 0.35)))
            sc.paint(smoothstep_inside(q - f, 0.15) * inner, -38.0, 0.1)
    if desc["margin"] == "sharp":
        sc.add_db(band(dist, -0.1, 0.3, 0.06) * (0.3 + 0.7 * node.radial_cos(x, z) ** 2), rng.uniform(3.0, 6.0))
    if desc["calcification"] == "micro":
        c, s = np.cos(node.rot), np.sin(node.rot)
        for _ in range(int(rng.integers(3, 10))):
            t, rr = rng.uniform(-np.pi, np.pi), np.sqrt(rng.uniform(0, 0.5))
            u, v = rr * node.a * np.cos(t), rr * node.b * np.sin(t)
            sc.add_point(node.cx + c * u - s * v, node.cz + s * u + c * v, rng.uniform(*CALC_DB))


def _mimics(sc: Scene, g: dict, node: StarShape, rng: np.random.Generator) -> np.ndarray:
    """Class-independent look-alikes: a vessel, hypo- and hyperechoic fat lobules and specular glints.

    They spread the dark and bright ends of the grey-level histogram independently of the class, so that the
    node's darkness (marked hypoechogenicity, necrosis) or bright hilum does not show in global image statistics.
    The vessel lumen is anechoic, or holds low-level echoes of slow flow in 40 % of images.

    Returns:
        Weight of the vessel lumen (excluded from the reference tissue).
    """
    x, z = sc.xz
    lumen = np.zeros(sc.echo_db.shape, np.float32)
    if g["vessel"]:
        r = rng.uniform(2.0, 6.0)
        side = float(rng.choice([-1.0, 1.0]))
        vessel = StarShape(
            cx=node.cx + side * (node.extent() + r + rng.uniform(1.0, 4.0)),
            cz=node.cz + rng.uniform(-2.0, 4.0),
            a=r,
            b=r * rng.uniform(0.6, 1.0),
            rot=float(rng.uniform(-0.3, 0.3)),
        )
        dv = vessel.signed_distance(x, z)
        sc.add_db(band(dv, 0.0, 0.4, 0.08), rng.uniform(3.0, 6.0))
        lumen = smoothstep_inside(dv, 0.1)
        flow_db = -45.0 if rng.uniform() < 0.6 else rng.uniform(-26.0, -14.0)
        sc.paint(lumen, flow_db + (flow_db > -40.0) * 2.0 * smooth_field(sc.echo_db.shape, 2.0, rng), 0.05)
    for _ in range(g["lobules"]):
        lob = StarShape(
            cx=rng.uniform(-0.45, 0.45) * g["depth"],
            cz=rng.uniform(g["scm"] + 1.0, g["depth"]),
            a=rng.uniform(1.5, 5.0),
            b=rng.uniform(1.0, 3.5),
            rot=float(rng.uniform(-0.4, 0.4)),
        )
        delta = rng.uniform(3.0, 7.0) if rng.uniform() < 0.4 else -rng.uniform(4.0, 20.0)
        if np.hypot(lob.cx - node.cx, lob.cz - node.cz) < node.extent() + lob.extent() + 1.0:
            continue
        sc.add_db(smoothstep_inside(lob.signed_distance(x, z), 0.4), delta)
    n = 0
    for _ in range(4 * g["glints"]):
        if n == g["glints"]:
            break
        px, pz = rng.uniform(-0.45, 0.45) * g["depth"], rng.uniform(g["fat"], g["depth"])
        amp = rng.uniform(*CALC_DB)
        if float(node.signed_distance(np.float32(px), np.float32(pz))) < 1.0:
            continue
        sc.add_point(px, pz, amp)
        n += 1
    return lumen


def _probe_and_receiver(
    rng: np.random.Generator, centre: Centre, depth_mm: float, size: int
) -> tuple[LinearProbe, Receiver]:
    """Draw the centre's probe and receiver settings (class-independent)."""
    probe = LinearProbe(
        name=centre.probe,
        f0_mhz=float(rng.uniform(*centre.f0_mhz)),
        depth_mm=float(depth_mm),
        width_mm=float(depth_mm),
        focus_mm=float(rng.uniform(0.35, 0.6) * depth_mm),
        f_number=float(rng.uniform(*centre.f_number)),
        bandwidth=float(rng.uniform(*centre.bandwidth)),
    )
    tilt = rng.uniform(*centre.tgc_tilt_db)
    sliders = tilt * np.linspace(0.0, 1.0, 6) + rng.uniform(-centre.tgc_jitter_db, centre.tgc_jitter_db, 6)
    rx = Receiver(
        alpha_nominal=TISSUE_ALPHA,
        tgc_slider_db=tuple(float(v) for v in sliders),
        noise_db=float(rng.uniform(*centre.noise_db)),
        dynamic_range_db=float(rng.uniform(*centre.dynamic_range_db)),
        gain_target=float(rng.uniform(*centre.gain_target)),
        gamma=float(rng.uniform(*centre.gamma)),
        focal_gain_db=float(rng.uniform(*centre.focal_gain_db)),
        smoothing_px=float(rng.uniform(*centre.smoothing_mm)) / (depth_mm / size),
    )
    return probe, rx


def build_scene(
    desc: dict, rng: np.random.Generator, size: int, centre: Centre = INT
) -> tuple[LinearProbe, Scene, Receiver]:
    """Build a neck scene with one lymph node; anatomy and settings are class-independent nuisances.

    Args:
        desc: Lymph-node descriptors from :func:`sample_descriptors`.
        rng: Random generator.
        size: Output image side in pixels.
        centre: Acquisition centre (``INT`` or ``EXT``).

    Returns:
        Probe, scene (on a coarse grid) and receiver settings.
    """
    g = _layout(rng, desc, centre)
    probe, rx = _probe_and_receiver(rng, centre, g["depth"], size)
    sc = Scene.empty(make_beam_grid(probe, size).coarse(2), 0.0, TISSUE_ALPHA)
    fat = _neck(sc, g, rng)
    node = _node_shape(desc, g, rng)
    lumen = _mimics(sc, g, node, rng)
    _render_node(sc, desc, node, rng)
    x, z = sc.xz
    r = node.extent() + 1.0
    column = (np.abs(x - node.cx) < r) & (z > node.cz)
    sc.ref = ((fat > 0.5) & (lumen < 0.5) & (node.signed_distance(x, z) > 1.5) & ~column).astype(np.float32)
    sc.lesions.append(node)
    return probe, sc, rx


def _preset(centre: Centre, salt: int) -> Preset:
    """The preset of one centre."""
    tag = centre.name.lower()
    return Preset(
        name=f"ln-{tag}",
        class_names=CLASS_NAMES,
        class_probs=(0.5, 0.5),
        prefix=f"synln{tag}",
        dataset_name=f"SynLN-{centre.name}",
        sample_descriptors=sample_descriptors,
        build_scene=partial(build_scene, centre=centre),
        caption=lymph_node_caption,
        seed_salt=salt,
    )


LN_INT = _preset(INT, 101)
LN_EXT = _preset(EXT, 102)
