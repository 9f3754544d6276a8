"""Findings in ultrasound text: lexicon descriptors (TI-RADS, BI-RADS, lymph-node, prostate) found in a sentence.

The vocabulary follows the descriptors the synthetic generator captions with (``usvl.data.synthetic.captions``)
and the class descriptions in ``configs/text/``. Extraction is deliberately simple and symmetric: the same words
give the same findings in a source and in its refinement, so a paraphrase that keeps the words keeps the findings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# category -> value -> (suspicious for malignancy, terms). Longer terms are matched first and mask shorter ones.
LEXICON: dict[str, dict[str, tuple[bool, tuple[str, ...]]]] = {
    "assessment": {
        "benign": (False, ("benign", "probably benign", "low suspicion", "not suspicious")),
        "malignant": (True, ("malignant", "malignancy", "suspicious", "highly suspicious", "carcinoma",
                             "metastatic", "metastasis", "cancer")),
        "normal": (False, ("normal",)),
    },
    "finding": {
        "mass": (False, ("mass", "lesion", "nodule", "focal lesion", "finding")),
    },
    "composition": {
        "cystic": (False, ("cystic", "almost completely cystic", "cyst")),
        "spongiform": (False, ("spongiform", "cystic spaces", "microcysts")),
        "mixed": (False, ("mixed cystic and solid", "complex cystic and solid", "cystic and solid")),
        "solid": (True, ("solid",)),
    },
    "echogenicity": {
        "anechoic": (False, ("anechoic",)),
        "hyperechoic": (False, ("hyperechoic",)),
        "isoechoic": (False, ("isoechoic",)),
        "hypoechoic": (True, ("hypoechoic",)),
        "very_hypoechoic": (True, ("very hypoechoic", "markedly hypoechoic")),
        "heterogeneous": (True, ("heterogeneous",)),
        "homogeneous": (False, ("homogeneous",)),
    },
    "shape": {
        "wider_than_tall": (False, ("wider than tall",)),
        "taller_than_wide": (True, ("taller than wide",)),
        "oval": (False, ("oval",)),
        "round": (True, ("round",)),
        "irregular": (True, ("irregular", "irregular in shape")),
    },
    "orientation": {
        "parallel": (False, ("parallel", "parallel to the skin")),
        "not_parallel": (True, ("not parallel", "not parallel to the skin", "non parallel", "nonparallel")),
    },
    "margin": {
        "smooth": (False, ("smooth", "circumscribed", "well circumscribed", "well defined", "sharp")),
        "ill_defined": (True, ("ill defined", "indistinct", "non circumscribed", "not circumscribed")),
        "lobulated": (True, ("lobulated", "irregular margin", "irregular margins")),
        "microlobulated": (True, ("microlobulated",)),
        "angular": (True, ("angular",)),
        "spiculated": (True, ("spiculated",)),
        "extension": (True, ("extrathyroidal extension", "extracapsular spread", "extracapsular extension")),
    },
    "calcification": {
        "foci": (False, ("echogenic foci",)),
        "calcification": (False, ("calcification", "calcifications")),
        "comet_tail": (False, ("comet tail", "comet tail artifact", "comet tail artifacts")),
        "macro": (False, ("macrocalcification", "macrocalcifications", "coarse calcification",
                          "coarse calcifications")),
        "rim": (True, ("rim calcification", "peripheral rim calcification", "peripheral rim")),
        "punctate": (True, ("punctate", "punctate echogenic foci", "microcalcification", "microcalcifications")),
        "scattered": (False, ("scattered",)),
    },
    "zone": {
        "peripheral": (False, ("peripheral zone",)),
        "transition": (False, ("transition zone",)),
    },
    "posterior": {
        "enhancement": (False, ("posterior acoustic enhancement", "posterior enhancement", "acoustic enhancement")),
        "shadowing": (True, ("posterior acoustic shadowing", "posterior shadowing", "acoustic shadowing",
                             "shadowing")),
        "none": (False, ("no posterior features",)),
        "combined": (False, ("combined posterior pattern", "combined posterior")),
    },
    "hilum": {
        "hilum": (False, ("hilum", "fatty hilum", "echogenic hilum", "echogenic fatty hilum", "hilar")),
        "narrowed": (True, ("narrowed", "compressed")),
    },
    "cortex": {
        "thin": (False, ("thin",)),
        "concentric": (False, ("concentric",)),
        "eccentric": (True, ("eccentric",)),
        "thickening": (True, ("cortical thickening", "thickened cortex")),
        "diffuse": (True, ("filling the whole node",)),
    },
    "necrosis": {
        "necrosis": (True, ("necrosis", "cystic necrosis", "cystic change")),
    },
    "vascularity": {
        "vascularity": (True, ("vascularity", "internal vascularity", "vascular flow")),
    },
    "distortion": {
        "distortion": (True, ("architectural distortion",)),
    },
    "gland": {
        "enlarged": (False, ("enlarged", "hyperplasia")),
        "small": (False, ("small",)),
        "bulge": (True, ("bulge", "capsular bulge")),
    },
}


def _category_terms(system: str, spellings: tuple[str, ...], levels: range, suspicious_from: int,
                    ranges: tuple[tuple[int, int], ...]) -> dict[str, tuple[bool, tuple[str, ...]]]:
    """Lexicon values for a reporting system's categories (``TI-RADS 5``, ``TR5``, ``BI-RADS 2 or 3``)."""
    values = {f"{system}{level}": (level >= suspicious_from,
                                   tuple(f"{spelling}{level}" for spelling in spellings))
              for level in levels}
    for low, high in ranges:
        values[f"{system}{low}_{high}"] = (high >= suspicious_from,
                                          tuple(f"{spelling}{low} {word} {high}" for spelling in spellings
                                                for word in ("to", "or")))
    return values


LEXICON["category"] = {
    **_category_terms("tr", ("ti rads ", "tirads ", "tr ", "tr"), range(1, 6), 4, ((1, 3), (2, 3), (4, 5))),
    **_category_terms("birads", ("bi rads ", "birads "), range(0, 7), 4, ((2, 3), (4, 5))),
}
"""Descriptor vocabulary: category -> value -> (suspicious for malignancy, terms in normalised form). The
``category`` entries are the reporting systems' assessment categories (ACR TI-RADS TR1-TR5, BI-RADS 0-6): a
refinement that drops or changes one is rejected like a changed descriptor."""

NEGATIONS = ("no", "without", "absent", "absence of", "loss of", "not", "negative for", "free of", "lacks")
"""Cue words that negate the findings after them, up to the end of the clause."""

CLAUSE_BREAKS = ("and", "but", "with", "while", "whereas", "which", "that")
"""Words that end a negation's reach (besides punctuation)."""


@dataclass(frozen=True, order=True)
class Finding:
    """One descriptor found in a text.

    Attributes:
        category: Lexicon category, e.g. ``margin``.
        value: Descriptor value, e.g. ``spiculated``.
        negated: The text denies it (``no punctate echogenic foci``).
    """

    category: str
    value: str
    negated: bool = False

    @property
    def suspicious(self) -> bool:
        """Whether the finding, as stated, is a feature suspicious for malignancy."""
        return LEXICON[self.category][self.value][0] and not self.negated

    def describe(self) -> str:
        """The finding in words, e.g. ``'no punctate'``."""
        return f"'{'no ' if self.negated else ''}{self.value.replace('_', ' ')}'"


def normalise(text: str) -> str:
    """Lower case, hyphens and slashes as spaces, one space between words."""
    return " ".join(re.sub(r"[-/]", " ", text.lower()).split())


def _patterns() -> list[tuple[re.Pattern[str], str, str]]:
    terms = [(term, category, value) for category, values in LEXICON.items()
             for value, (_, words) in values.items() for term in words]
    terms.sort(key=lambda item: len(item[0]), reverse=True)
    return [(re.compile(rf"\b{re.escape(term)}\b"), category, value) for term, category, value in terms]


_PATTERNS = _patterns()
_NEGATION = re.compile(rf"\b({'|'.join(re.escape(cue) for cue in NEGATIONS)})\b")
_BREAK = re.compile(rf"[.;:,()]|\b({'|'.join(CLAUSE_BREAKS)})\b")


def _negated(masked: str, start: int) -> bool:
    before = masked[:start]
    breaks = [match.end() for match in _BREAK.finditer(before)]
    return bool(_NEGATION.search(before[breaks[-1]:] if breaks else before))


def extract_findings(text: str) -> set[Finding]:
    """The lexicon findings stated in ``text`` (each with whether it is negated).

    Terms are matched longest first; a negation cue (``no``, ``without``, ...) negates every term after it up to
    the end of its clause (punctuation or a word such as ``and``/``with``). Cue words inside a matched term
    (``not parallel``) negate nothing else.

    Args:
        text: A sentence or report.

    Returns:
        The set of findings; empty when no descriptor is named.
    """
    normal = normalise(text)
    taken = [False] * len(normal)
    matches: list[tuple[int, int, str, str]] = []
    for pattern, category, value in _PATTERNS:
        for match in pattern.finditer(normal):
            if not any(taken[match.start():match.end()]):
                taken[match.start():match.end()] = [True] * (match.end() - match.start())
                matches.append((match.start(), match.end(), category, value))
    masked = "".join("_" if hit else char for char, hit in zip(normal, taken, strict=True))
    return {Finding(category, value, _negated(masked, start)) for start, _, category, value in matches}
