"""ACR TI-RADS (2017): thyroid nodule descriptors, points and TR levels.

Tessler et al., "ACR Thyroid Imaging, Reporting and Data System (TI-RADS): White Paper of the ACR TI-RADS
Committee", J Am Coll Radiol 14(5):587-595, 2017, doi:10.1016/j.jacr.2017.01.046. Points per descriptor value are
those of the white paper's chart; echogenic foci add up (each kind once); a spongiform nodule scores 0 with no
further points. Levels: 0-1 points TR1, 2 TR2, 3 TR3, 4-6 TR4, 7 or more TR5 (ACR defines TR1 as 0 points; a
1-point total, which ACR does not assign, is TR1 here).

The synthetic thyroid generator (:mod:`usvl.data.synthetic.presets.thyroid`) samples its descriptors in this
vocabulary and scores them with these functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from usvl.lexicon.base import Lexicon, capitalise, join_phrases, plural

COMPOSITION = ("cystic", "spongiform", "mixed", "solid")
ECHOGENICITY = ("anechoic", "hyperechoic", "isoechoic", "hypoechoic", "very_hypoechoic")
SHAPE = ("wider_than_tall", "taller_than_wide")
MARGIN = ("smooth", "ill_defined", "lobulated_irregular", "extrathyroidal_extension")
ECHOGENIC_FOCI = ("comet_tail", "macrocalcification", "rim", "punctate")
"""Kinds of echogenic foci (multi-label; ``none`` when there are none)."""

POINTS = {
    "composition": {"cystic": 0, "spongiform": 0, "mixed": 1, "solid": 2},
    "echogenicity": {"anechoic": 0, "hyperechoic": 1, "isoechoic": 1, "hypoechoic": 2, "very_hypoechoic": 3},
    "shape": {"wider_than_tall": 0, "taller_than_wide": 3},
    "margin": {"smooth": 0, "ill_defined": 0, "lobulated_irregular": 2, "extrathyroidal_extension": 3},
    "echogenic_foci": {"none": 0, "comet_tail": 0, "macrocalcification": 1, "rim": 2, "punctate": 3},
}
"""ACR TI-RADS (2017) points per descriptor value."""

TR_LEVELS = ("TR1", "TR2", "TR3", "TR4", "TR5")
"""The levels, least to most suspicious."""

PHRASES = {
    "composition": {
        "cystic": "cystic",
        "spongiform": "spongiform",
        "mixed": "mixed cystic and solid",
        "solid": "solid",
    },
    "echogenicity": {
        "anechoic": "anechoic",
        "hyperechoic": "hyperechoic",
        "isoechoic": "isoechoic",
        "hypoechoic": "hypoechoic",
        "very_hypoechoic": "very hypoechoic",
    },
    "shape": {"wider_than_tall": "wider-than-tall", "taller_than_wide": "taller-than-wide"},
    "margin": {
        "smooth": "smooth margins",
        "ill_defined": "ill-defined margins",
        "lobulated_irregular": "lobulated or irregular margins",
        "extrathyroidal_extension": "extrathyroidal extension",
    },
    "echogenic_foci": {
        "none": "no echogenic foci",
        "comet_tail": "large comet-tail artifacts",
        "macrocalcification": "macrocalcification with posterior shadowing",
        "rim": "peripheral rim calcification",
        "punctate": "punctate echogenic foci",
    },
}
"""Words per descriptor value (the generator's captions and the report sentence use them)."""


PROMPT_TEMPLATES = {
    "composition": ("Thyroid nodule, {}.", "Thyroid nodule on ultrasound, {}."),
    "echogenicity": ("Thyroid nodule, {}.", "Thyroid nodule on ultrasound, {}."),
    "shape": ("Thyroid nodule, {}.", "Thyroid nodule on ultrasound, {}."),
    "margin": ("Thyroid nodule with {}.", "Thyroid nodule on ultrasound with {}."),
    "echogenic_foci": ("Thyroid nodule with {}.", "Thyroid nodule on ultrasound with {}."),
}
"""Zero-shot prompt templates per descriptor (``{}``: the value's phrase), worded like the lexicon captions."""

CAPTION_TEMPLATE = ("Thyroid nodule, {composition}, {echogenicity}, {shape}, with {margin} and {echogenic_foci}.")
"""The lexicon caption of a nodule (the synthetic generator's captions; zero-shot prompts in ``caption`` mode)."""


def tirads_category(points: int) -> str:
    """ACR TI-RADS level from points: 0-1 TR1, 2 TR2, 3 TR3, 4-6 TR4, >=7 TR5.

    ACR defines TR1 as 0 points; a 1-point total (not assigned by ACR) is mapped to TR1 here.
    """
    if points <= 1:
        return "TR1"
    if points == 2:
        return "TR2"
    if points == 3:
        return "TR3"
    if points <= 6:
        return "TR4"
    return "TR5"


def _sentence(d: Mapping[str, Any], points: int, category: str) -> str:
    """The report sentence, e.g. ``Solid, hypoechoic, taller-than-wide nodule with ... foci: TR5, 12 points``."""
    p = PHRASES
    foci = d["echogenic_foci"]
    foci = [foci] if isinstance(foci, str) else [f for f in ECHOGENIC_FOCI if f in foci] or ["none"]
    features = [p["margin"][d["margin"]], *(p["echogenic_foci"][f] for f in foci)]
    return (f"{capitalise(p['composition'][d['composition']])}, {p['echogenicity'][d['echogenicity']]}, "
            f"{p['shape'][d['shape']]} nodule with {join_phrases(features)}: {category}, {plural(points, 'points')}")


TIRADS = Lexicon(
    name="tirads",
    title="ACR TI-RADS",
    single={"composition": COMPOSITION, "echogenicity": ECHOGENICITY, "shape": SHAPE, "margin": MARGIN},
    multi={"echogenic_foci": ECHOGENIC_FOCI},
    points_table=POINTS,
    categories=TR_LEVELS,
    category_of=tirads_category,
    phrases=PHRASES,
    sentence_of=_sentence,
    gate=("composition", "spongiform"),
    lesion="nodule",
    prompt_templates=PROMPT_TEMPLATES,
    caption_template=CAPTION_TEMPLATE,
)
"""The ACR TI-RADS lexicon."""


def tirads_points(descriptors: Mapping[str, Any]) -> int:
    """ACR TI-RADS total points from the five lexicon descriptors.

    Args:
        descriptors: Mapping with keys ``composition``, ``echogenicity``, ``shape``, ``margin``,
            ``echogenic_foci`` (single value or list of foci; foci points are additive).

    Returns:
        Total points. Spongiform nodules score 0 (ACR: "do not add further points for other categories").
    """
    return TIRADS.points(descriptors)
