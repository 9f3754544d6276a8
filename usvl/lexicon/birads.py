"""BI-RADS ultrasound mass descriptors and a transparent BI-RADS-like category.

Descriptors and values of the ACR BI-RADS Atlas, 5th edition (2013), ultrasound lexicon for masses: shape, orientation,
margin, echo pattern, posterior features; calcifications in a mass (micro, macro; multi-label, ``none`` when absent).

BI-RADS assigns no points: its assessment categories are a reader's judgement. For an interpretable score the
read-out counts the **suspicious features** of the descriptors (one point each, the features the sonographic
literature associates with malignancy, e.g. Stavros et al., Radiology 196:123-134, 1995; Hong et al., AJR
184:1260-1265, 2005): irregular shape, not parallel orientation, a margin that is not circumscribed (indistinct,
angular, microlobulated, spiculated), a complex cystic and solid echo pattern, posterior shadowing and
microcalcifications. The count maps to a **BI-RADS-like** category: 0 -> 3-like, 1 -> 4A-like, 2 -> 4B-like,
3 -> 4C-like, 4 or more -> 5-like; an image the classifier calls normal is 1-like. This is a heuristic for a
consistent read-out, not an ACR BI-RADS assessment.

The synthetic breast generator (:mod:`usvl.data.synthetic.presets.breast`) samples its descriptors in this vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from usvl.lexicon.base import Lexicon, capitalise, join_phrases, plural

SHAPE = ("oval", "round", "irregular")
ORIENTATION = ("parallel", "not_parallel")
MARGIN = ("circumscribed", "indistinct", "angular", "microlobulated", "spiculated")
ECHO_PATTERN = ("anechoic", "hypoechoic", "isoechoic", "complex", "hyperechoic", "heterogeneous")
POSTERIOR = ("enhancement", "none", "shadowing", "combined")
CALCIFICATION = ("micro", "macro")
"""Calcifications in a mass (multi-label; ``none`` when there are none)."""

SUSPICIOUS = {
    "shape": {"oval": 0, "round": 0, "irregular": 1},
    "orientation": {"parallel": 0, "not_parallel": 1},
    "margin": {"circumscribed": 0, "indistinct": 1, "angular": 1, "microlobulated": 1, "spiculated": 1},
    "echo_pattern": {"anechoic": 0, "hypoechoic": 0, "isoechoic": 0, "complex": 1, "hyperechoic": 0,
                     "heterogeneous": 0},
    "posterior": {"enhancement": 0, "none": 0, "shadowing": 1, "combined": 0},
    "calcification": {"none": 0, "micro": 1, "macro": 0},
}
"""One point per suspicious descriptor value (the read-out's score; see the module docstring)."""

CATEGORIES = ("BI-RADS 3-like", "BI-RADS 4A-like", "BI-RADS 4B-like", "BI-RADS 4C-like", "BI-RADS 5-like")
"""The BI-RADS-like categories of a mass, least to most suspicious."""

PHRASES = {
    "shape": {"oval": "Oval", "round": "Round", "irregular": "Irregular"},
    "orientation": {"parallel": "parallel", "not_parallel": "not parallel"},
    "margin": {
        "circumscribed": "circumscribed margins",
        "indistinct": "indistinct margins",
        "angular": "angular margins",
        "microlobulated": "microlobulated margins",
        "spiculated": "spiculated margins",
    },
    "echo_pattern": {
        "anechoic": "anechoic",
        "hypoechoic": "hypoechoic",
        "isoechoic": "isoechoic",
        "complex": "complex cystic and solid",
        "hyperechoic": "hyperechoic",
        "heterogeneous": "heterogeneous",
    },
    "posterior": {
        "enhancement": "posterior acoustic enhancement",
        "none": "no posterior features",
        "shadowing": "posterior acoustic shadowing",
        "combined": "combined posterior pattern",
    },
    "calcification": {
        "none": "no calcifications",
        "micro": "microcalcifications",
        "macro": "macrocalcification",
    },
}
"""Words per descriptor value (the generator's captions and the report sentence use them)."""


PROMPT_TEMPLATES = {
    "shape": ("{} mass.", "{} breast mass on ultrasound."),
    "orientation": ("Breast mass, {}.", "Breast mass on ultrasound, {}."),
    "margin": ("Breast mass with {}.", "Breast mass on ultrasound with {}."),
    "echo_pattern": ("Breast mass, {}.", "Breast mass on ultrasound, {}."),
    "posterior": ("Breast mass with {}.", "Breast mass on ultrasound with {}."),
    "calcification": ("Breast mass with {}.", "Breast mass on ultrasound with {}."),
}
"""Zero-shot prompt templates per descriptor (``{}``: the value's phrase), worded like the lexicon captions."""

CAPTION_TEMPLATE = "{shape}, {orientation} mass with {margin}, {echo_pattern}, {posterior}, {calcification}."
"""The lexicon caption of a mass (the synthetic generator's captions; zero-shot prompts in ``caption`` mode)."""


def birads_category(count: int) -> str:
    """The BI-RADS-like category of a count of suspicious features (see the module docstring)."""
    return CATEGORIES[min(max(count, 0), len(CATEGORIES) - 1)]


def _sentence(d: Mapping[str, Any], points: int, category: str) -> str:
    """The report sentence, e.g. ``Irregular, not parallel, hypoechoic mass with ...: BI-RADS 5-like, ...``."""
    p = PHRASES
    calcification = d["calcification"]
    calcification = [calcification] if isinstance(calcification, str) else \
        [c for c in CALCIFICATION if c in calcification] or ["none"]
    calcifications = join_phrases([p["calcification"][c] for c in calcification])
    features = [p["margin"][d["margin"]], p["posterior"][d["posterior"]], calcifications]
    return (f"{capitalise(p['shape'][d['shape']])}, {p['orientation'][d['orientation']]}, "
            f"{p['echo_pattern'][d['echo_pattern']]} mass with {join_phrases(features)}: {category}, "
            f"{plural(points, 'suspicious features')}")


BIRADS = Lexicon(
    name="birads",
    title="BI-RADS (ultrasound, masses)",
    single={"shape": SHAPE, "orientation": ORIENTATION, "margin": MARGIN, "echo_pattern": ECHO_PATTERN,
            "posterior": POSTERIOR},
    multi={"calcification": CALCIFICATION},
    points_table=SUSPICIOUS,
    categories=CATEGORIES,
    category_of=birads_category,
    phrases=PHRASES,
    sentence_of=_sentence,
    no_finding_class="normal",
    no_finding_category="BI-RADS 1-like",
    lesion="mass",
    points_unit="suspicious features",
    prompt_templates=PROMPT_TEMPLATES,
    caption_template=CAPTION_TEMPLATE,
)
"""The BI-RADS ultrasound mass lexicon with the suspicious-feature count as its points."""
