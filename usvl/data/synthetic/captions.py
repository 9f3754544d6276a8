"""Lexicon captions generated from descriptors (never fed to classifiers at test time)."""

from __future__ import annotations

from usvl.lexicon.birads import BIRADS
from usvl.lexicon.birads import PHRASES as BIRADS_PHRASES
from usvl.lexicon.tirads import PHRASES as TIRADS_PHRASES
from usvl.lexicon.tirads import TIRADS

THYROID_PHRASES = TIRADS_PHRASES
"""Words per ACR TI-RADS descriptor value (defined in :mod:`usvl.lexicon.tirads`)."""

BREAST_PHRASES = BIRADS_PHRASES
"""Words per BI-RADS descriptor value (defined in :mod:`usvl.lexicon.birads`)."""


def thyroid_caption(d: dict) -> str:
    """Caption a thyroid nodule from its ACR TI-RADS descriptors (:meth:`usvl.lexicon.Lexicon.caption`).

    Args:
        d: Thyroid descriptors.

    Returns:
        One-sentence lexicon description.
    """
    return TIRADS.caption(d)


def breast_caption(d: dict) -> str:
    """Caption a breast image from its BI-RADS descriptors (normal images have ``finding == "none"``).

    Args:
        d: Breast descriptors.

    Returns:
        One-sentence lexicon description.
    """
    if d.get("finding") == "none":
        return "Normal breast tissue without a focal mass."
    return BIRADS.caption(d)


LYMPH_NODE_PHRASES = {
    "shape": {"oval": "Oval", "round": "Round"},
    "hilum": {
        "present": "a preserved echogenic fatty hilum",
        "narrowed": "a narrowed, compressed fatty hilum",
        "absent": "no echogenic fatty hilum",
    },
    "cortex": {
        "thin": "a thin, uniform hypoechoic cortex",
        "concentric_thickening": "concentric cortical thickening",
        "eccentric_thickening": "eccentric cortical thickening",
        "diffuse": "the cortex filling the whole node",
    },
    "echogenicity": {
        "hypoechoic": "hypoechoic",
        "markedly_hypoechoic": "markedly hypoechoic",
        "heterogeneous": "heterogeneous",
    },
    "necrosis": {"none": "no necrosis", "cystic": "cystic necrosis"},
    "calcification": {"none": "no calcifications", "micro": "microcalcifications"},
    "margin": {"sharp": "sharp margins", "indistinct": "indistinct margins"},
}

PROSTATE_PHRASES = {
    "transition_zone": {
        "normal": "a small transition zone",
        "enlarged": "an enlarged, nodular transition zone (benign prostatic hyperplasia)",
    },
    "lesion": {
        "none": "no focal lesion",
        "pz_hypoechoic": "a hypoechoic, ill-defined peripheral-zone lesion",
        "pz_isoechoic": "a subtle, nearly isoechoic peripheral-zone lesion",
        "tz_nodule": "a well-circumscribed transition-zone nodule",
    },
    "capsule": {"smooth": "a smooth, continuous capsule", "bulge": "a focal capsular bulge"},
    "calcification": {
        "none": "no calcifications",
        "scattered": "scattered prostatic calcifications",
        "shadowing": "prostatic calcifications with posterior acoustic shadowing",
    },
}


def lymph_node_caption(d: dict) -> str:
    """Caption a cervical lymph node from its descriptors.

    Args:
        d: Lymph-node descriptors (``ls_ratio`` is the long-to-short axis ratio).

    Returns:
        One-sentence description in radiology terms.
    """
    p = LYMPH_NODE_PHRASES
    cortex = "" if d["hilum"] == "absent" else f" and {p['cortex'][d['cortex']]}"
    return (
        f"{p['shape'][d['shape']]} cervical lymph node (long-to-short axis ratio {d['ls_ratio']:.1f}) with "
        f"{p['hilum'][d['hilum']]}{cortex}, {p['echogenicity'][d['echogenicity']]}, "
        f"{p['necrosis'][d['necrosis']]}, {p['calcification'][d['calcification']]} and "
        f"{p['margin'][d['margin']]}."
    )


def prostate_caption(d: dict) -> str:
    """Caption a transverse transrectal (micro-)ultrasound image of the prostate from its descriptors.

    Args:
        d: Prostate descriptors.

    Returns:
        One-sentence description in radiology terms.
    """
    p = PROSTATE_PHRASES
    return (
        f"Transverse transrectal ultrasound of the prostate gland with {p['transition_zone'][d['transition_zone']]}, "
        f"{p['lesion'][d['lesion']]}, {p['capsule'][d['capsule']]} and {p['calcification'][d['calcification']]}."
    )
