"""The findings guard: planted contradictions are rejected, faithful paraphrases kept."""

import itertools

import pytest

from usvl.data.synthetic import captions
from usvl.text.findings import Finding, extract_findings
from usvl.text.guard import check_refinement

CAPTIONERS = {
    "thyroid": (captions.THYROID_PHRASES, captions.thyroid_caption,
                {"composition": "solid", "echogenicity": "hypoechoic", "shape": "wider_than_tall",
                 "margin": "smooth", "echogenic_foci": "none"}),
    "breast": (captions.BREAST_PHRASES, captions.breast_caption,
               {"shape": "oval", "orientation": "parallel", "margin": "circumscribed", "echo_pattern": "hypoechoic",
                "posterior": "none", "calcification": "none"}),
    "lymph_node": (captions.LYMPH_NODE_PHRASES, captions.lymph_node_caption,
                   {"shape": "oval", "hilum": "present", "cortex": "thin", "echogenicity": "hypoechoic",
                    "necrosis": "none", "calcification": "none", "margin": "sharp", "ls_ratio": 2.5}),
    "prostate": (captions.PROSTATE_PHRASES, captions.prostate_caption,
                 {"transition_zone": "normal", "lesion": "none", "capsule": "smooth", "calcification": "none"}),
}


def swapped_captions():
    for organ, (phrases, caption, base) in CAPTIONERS.items():
        for category, values in phrases.items():
            for a, b in itertools.permutations(values, 2):
                source, planted = caption({**base, category: a}), caption({**base, category: b})
                if source != planted:
                    yield pytest.param(source, planted, id=f"{organ}-{category}-{a}->{b}")


@pytest.mark.parametrize(("source", "planted"), list(swapped_captions()))
def test_every_swapped_generator_descriptor_is_rejected(source, planted):
    assert check_refinement(source, source).accepted
    verdict = check_refinement(source, planted)
    assert not verdict.accepted and verdict.reasons


def test_a_faithful_paraphrase_is_accepted():
    source = "Thyroid nodule, solid, hypoechoic, taller-than-wide, with smooth margins and no echogenic foci."
    paraphrase = ("A solid, hypoechoic thyroid nodule that is taller than wide, with smooth margins and without "
                  "echogenic foci.")
    assert check_refinement(source, paraphrase).accepted


def test_malignant_features_turned_benign_are_named():
    verdict = check_refinement("A malignant thyroid nodule with spiculated margins and punctate echogenic foci.",
                               "A benign thyroid nodule with smooth margins and no echogenic foci.")
    assert not verdict.accepted
    assert sum("malignant feature turned benign" in r for r in verdict.reasons) == 3
    assert any("margin 'spiculated' -> 'smooth'" in r for r in verdict.reasons)


def test_a_dropped_descriptor_and_a_flipped_negation_are_rejected():
    dropped = check_refinement("A solid hypoechoic nodule with posterior acoustic shadowing.",
                               "A solid hypoechoic nodule.")
    assert dropped.reasons == ["dropped posterior 'shadowing'"]
    flipped = check_refinement("An oval mass with no posterior shadowing.", "An oval mass with posterior shadowing.")
    assert not flipped.accepted and "posterior" in flipped.reasons[0]


def test_an_empty_refinement_is_rejected():
    assert check_refinement("A solid nodule.", "  ").reasons == ["empty refinement"]


def test_negation_reaches_to_the_end_of_the_clause_only():
    findings = extract_findings("No cyst, no solid mass and no calcifications, with posterior acoustic enhancement.")
    assert Finding("composition", "solid", True) in findings
    assert Finding("calcification", "calcification", True) in findings
    assert Finding("posterior", "enhancement", False) in findings
    assert Finding("orientation", "not_parallel") in extract_findings("A mass not parallel to the skin.")


REPORTING_CATEGORIES = [  # TI-RADS / BI-RADS categories are findings: dropping or changing one is rejected
    ("A highly suspicious TI-RADS 5 thyroid nodule, solid.", "A highly suspicious thyroid nodule, solid.", False),
    ("A highly suspicious TI-RADS 5 thyroid nodule, solid.", "A solid, highly suspicious TR5 thyroid nodule.", True),
    ("A low-suspicion TI-RADS 1 to 3 thyroid nodule.", "A low-suspicion TI-RADS 4 thyroid nodule.", False),
    ("A BI-RADS 2 or 3 breast mass.", "A BI-RADS 2 or 3 mass of the breast.", True),
    ("A BI-RADS 5 breast mass.", "A breast mass.", False),
]
ADDED_FINDINGS = [  # findings the source did not state are rejected, except the generic lesion word
    ("The whole prostate gland with its peripheral and transition zones.",
     "The prostate gland, with peripheral and transition zones, has a benign shape and echogenic foci.", False),
    ("A solid thyroid nodule.", "A solid thyroid nodule with punctate echogenic foci.", False),
    ("An oval, circumscribed fibroadenoma.", "An oval, circumscribed fibroadenoma, a benign mass.", False),
    ("An oval, circumscribed fibroadenoma.", "A circumscribed oval mass: a fibroadenoma.", True),
    ("Normal breast parenchyma.", "Normal breast parenchyma with a small lesion.", False),
]


@pytest.mark.parametrize(("source", "refined", "accepted"), REPORTING_CATEGORIES + ADDED_FINDINGS)
def test_reporting_categories_and_added_findings(source, refined, accepted):
    assert check_refinement(source, refined).accepted is accepted
