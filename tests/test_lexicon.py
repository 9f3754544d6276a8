"""The lexicon tables (ACR TI-RADS, BI-RADS): points, levels, expected points and sentences, against the generator."""

import hashlib
import itertools
import json

import numpy as np
import pytest
import torch

from usvl.data.synthetic.presets import PRESETS
from usvl.data.synthetic.presets import breast as breast_preset
from usvl.data.synthetic.presets import thyroid as thyroid_preset
from usvl.lexicon import BIRADS, TIRADS, get_lexicon, tirads_category, tirads_points

# The ACR TI-RADS chart (Tessler et al., JACR 2017), written out here independently of usvl.lexicon.
ACR_CHART = {
    "composition": {"cystic": 0, "spongiform": 0, "mixed": 1, "solid": 2},
    "echogenicity": {"anechoic": 0, "hyperechoic": 1, "isoechoic": 1, "hypoechoic": 2, "very_hypoechoic": 3},
    "shape": {"wider_than_tall": 0, "taller_than_wide": 3},
    "margin": {"smooth": 0, "ill_defined": 0, "lobulated_irregular": 2, "extrathyroidal_extension": 3},
    "echogenic_foci": {"none": 0, "comet_tail": 0, "macrocalcification": 1, "rim": 2, "punctate": 3},
}


def acr_reference(d):
    """Points and level by the chart: spongiform scores 0; foci add up, each kind once; 0-1 TR1 ... >=7 TR5."""
    if d["composition"] == "spongiform":
        points = 0
    else:
        foci = [d["echogenic_foci"]] if isinstance(d["echogenic_foci"], str) else d["echogenic_foci"]
        points = sum(ACR_CHART[k][d[k]] for k in ("composition", "echogenicity", "shape", "margin"))
        points += sum(ACR_CHART["echogenic_foci"][f] for f in set(foci))
    levels = {0: "TR1", 1: "TR1", 2: "TR2", 3: "TR3", 4: "TR4", 5: "TR4", 6: "TR4"}
    return points, levels.get(points, "TR5")


def test_tirads_points_and_levels_match_the_generator_and_the_acr_chart():
    rng = np.random.default_rng(2017)
    for i in range(2000):
        d = thyroid_preset.sample_descriptors(("benign", "malignant")[i % 2], rng)
        points, level = acr_reference(d)
        assert d["tirads_points"] == points == TIRADS.points(d) == tirads_points(d), d
        assert d["tirads_category"] == level == TIRADS.category(points) == tirads_category(points), d
    # every combination, with any set of foci (the generator draws one kind per nodule)
    foci_sets = [s for n in range(3) for s in itertools.combinations(TIRADS.multi["echogenic_foci"], n)]
    for values in itertools.product(*TIRADS.single.values(), foci_sets):
        d = dict(zip(TIRADS.descriptors, values, strict=True))
        assert TIRADS.points(d) == acr_reference({**d, "echogenic_foci": list(d["echogenic_foci"]) or "none"})[0]


def test_generator_draws_are_unchanged_by_the_lexicon_move():
    """1000 descriptor draws and captions per preset hash as before the tables moved into usvl.lexicon."""
    expected = {"thyroid": "3f1c342b915586084875f0f0d52c1e360fc85be1689c53d8eeb1d43fa57efc46",
                "breast": "219de0afb6a043d760cd5c2adbe2da70f86f2edf5776bba834a1dee7380916f1"}
    for preset, digest in expected.items():
        p = PRESETS[preset]
        draws = []
        for i in range(1000):
            d = p.sample_descriptors(p.class_names[i % len(p.class_names)], np.random.default_rng([7, i]))
            draws.append([p.class_names[i % len(p.class_names)], d, p.caption(d)])
        assert hashlib.sha256(json.dumps(draws, sort_keys=True).encode()).hexdigest() == digest, preset


def test_generator_samples_in_the_lexicon_vocabularies():
    for table, name in ((thyroid_preset.COMPOSITION, "composition"), (thyroid_preset.ECHOGENICITY, "echogenicity"),
                        (thyroid_preset.SHAPE, "shape"), (thyroid_preset.MARGIN, "margin")):
        for label in table:
            assert set(table[label]) <= set(TIRADS.single[name])
    for label in thyroid_preset.FOCI:
        assert set(thyroid_preset.FOCI[label]) <= {"none", *TIRADS.multi["echogenic_foci"]}
    for name, tables in breast_preset.TABLES.items():
        vocabulary = BIRADS.single.get(name) or ("none", *BIRADS.multi[name])
        for label in tables:
            assert set(tables[label]) <= set(vocabulary), name
    rng = np.random.default_rng(1)
    for i in range(500):
        d = breast_preset.sample_descriptors(("benign", "malignant")[i % 2], rng)
        assert all(BIRADS.parse(k, d[k]) is not None for k in BIRADS.descriptors)


def _one_hot(lexicon, d):
    probabilities = {}
    for name, values in lexicon.single.items():
        probabilities[name] = torch.tensor([[float(v == d[name]) for v in values]])
    for name, values in lexicon.multi.items():
        chosen = [d[name]] if isinstance(d[name], str) else d[name]
        probabilities[name] = torch.tensor([[float(v in chosen) for v in values]])
    return probabilities


@pytest.mark.parametrize("lexicon", [TIRADS, BIRADS], ids=lambda lexicon: lexicon.name)
def test_expected_points_of_certain_descriptors_are_their_points(lexicon):
    preset = PRESETS["thyroid" if lexicon is TIRADS else "breast"]
    rng = np.random.default_rng(5)
    for i in range(150):
        d = preset.sample_descriptors(("benign", "malignant")[i % 2], rng)
        assert float(lexicon.expected_points(_one_hot(lexicon, d))[0]) == pytest.approx(lexicon.points(d))


def test_expected_points_are_the_mean_over_independent_descriptors():
    """Exact enumeration of every descriptor combination under random head probabilities (spongiform gate included)."""
    generator = torch.Generator().manual_seed(0)
    probabilities = {name: torch.rand(1, len(values), generator=generator).softmax(-1)
                     for name, values in TIRADS.single.items()}
    probabilities["echogenic_foci"] = torch.rand(1, 4, generator=generator)
    p_foci = probabilities["echogenic_foci"][0]
    mean = 0.0
    for values in itertools.product(*TIRADS.single.values(), itertools.product((0, 1), repeat=4)):
        d = dict(zip(TIRADS.single, values[:-1], strict=True))
        present = values[-1]
        weight = float(np.prod([probabilities[n][0, TIRADS.single[n].index(d[n])] for n in TIRADS.single]))
        weight *= float(np.prod([p_foci[k] if bit else 1 - p_foci[k] for k, bit in enumerate(present)]))
        d["echogenic_foci"] = [f for f, bit in zip(TIRADS.multi["echogenic_foci"], present, strict=True) if bit]
        mean += weight * TIRADS.points(d)
    assert float(TIRADS.expected_points(probabilities)[0]) == pytest.approx(mean, rel=1e-5)


def test_report_sentences():
    d = {"composition": "solid", "echogenicity": "hypoechoic", "shape": "taller_than_wide",
         "margin": "lobulated_irregular", "echogenic_foci": ("punctate",)}
    assert TIRADS.sentence(d) == ("Solid, hypoechoic, taller-than-wide nodule with lobulated or irregular margins and "
                                  "punctate echogenic foci: TR5, 12 points")
    d = {**d, "composition": "cystic", "echogenicity": "anechoic", "shape": "wider_than_tall", "margin": "smooth",
         "echogenic_foci": ()}
    assert TIRADS.sentence(d) == ("Cystic, anechoic, wider-than-tall nodule with smooth margins and no echogenic "
                                  "foci: TR1, 0 points")
    d = {"shape": "irregular", "orientation": "not_parallel", "margin": "spiculated", "echo_pattern": "hypoechoic",
         "posterior": "shadowing", "calcification": ("micro", "macro")}
    assert BIRADS.sentence(d) == ("Irregular, not parallel, hypoechoic mass with spiculated margins, posterior "
                                  "acoustic shadowing and microcalcifications and macrocalcification: BI-RADS 5-like, "
                                  "5 suspicious features")
    assert [BIRADS.category(n) for n in range(7)] == ["BI-RADS 3-like", "BI-RADS 4A-like", "BI-RADS 4B-like",
                                                      "BI-RADS 4C-like", "BI-RADS 5-like", "BI-RADS 5-like",
                                                      "BI-RADS 5-like"]


def test_readout_reports_decided_descriptors_points_and_sentence():
    probabilities = {"composition": [0.05, 0.0, 0.15, 0.8], "echogenicity": [0, 0.1, 0.1, 0.7, 0.1],
                     "shape": [0.3, 0.7], "margin": [0.5, 0.1, 0.3, 0.1], "echogenic_foci": [0.1, 0.2, 0.1, 0.9]}
    readout = TIRADS.readout(probabilities)
    assert readout["descriptors"]["composition"] == {
        "value": "solid", "probability": 0.8,
        "probabilities": {"cystic": 0.05, "spongiform": 0.0, "mixed": 0.15, "solid": 0.8}}
    assert readout["descriptors"]["echogenic_foci"]["values"] == ["punctate"]
    assert (readout["points"], readout["category"]) == (10, "TR5")
    assert readout["sentence"].endswith("punctate echogenic foci: TR5, 10 points")
    assert 0 < readout["expected_points"] < 14
    assert BIRADS.readout({n: [1.0] + [0.0] * (k - 1) for n, k in BIRADS.head_sizes().items()},
                          finding=False)["sentence"] == "No focal mass: BI-RADS 1-like."


def test_encode_targets_masks_missing_descriptors_and_refuses_unknown_values():
    batch = {"composition": ["solid", "", "Mixed"], "echogenicity": ["very hypoechoic", "isoechoic", None],
             "echogenic_foci": ["punctate", "none", "rim;macrocalcification"]}
    targets = TIRADS.encode_targets(batch, 3)
    assert targets["composition"].tolist() == [3, -1, 2]
    assert targets["echogenicity"].tolist() == [4, 2, -1]
    assert targets["shape"].tolist() == [-1, -1, -1]  # absent from the batch: missing for every image
    assert targets["echogenic_foci"].tolist() == [[0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]]
    assert TIRADS.encode_targets({"echogenic_foci": ["", "x"][:1]}, 1)["echogenic_foci"].tolist() == [[-1] * 4]
    with pytest.raises(ValueError, match="unknown value 'lumpy'"):
        TIRADS.encode_targets({"composition": ["lumpy"]}, 1)
    with pytest.raises(KeyError, match="available"):
        get_lexicon("lirads")
