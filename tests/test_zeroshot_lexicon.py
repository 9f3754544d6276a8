"""Zero-shot lexicon descriptors: prompts per descriptor value, and logits as scaled similarities with their prototypes.

The end-to-end run from a stage-1 checkpoint (``usvl test`` and ``usvl predict`` with
``configs/zeroshot/thyroid_lexicon.yaml``) is in test_contrastive.py, beside the other stage-1 tests.
"""

import pytest
import torch
import torch.nn.functional as F

from usvl.lexicon import BIRADS, TIRADS
from usvl.models.encoders import TinyViTCLIP
from usvl.models.encoders.base import ImageFeatures
from usvl.tasks import ZeroShotLexiconTask


def test_value_prompts_fill_each_template_with_each_values_phrase():
    prompts = TIRADS.value_prompts()
    assert list(prompts) == list(TIRADS.descriptors)
    assert prompts["echogenicity"]["very_hypoechoic"] == ["Thyroid nodule, very hypoechoic.",
                                                          "Thyroid nodule on ultrasound, very hypoechoic."]
    assert list(prompts["echogenic_foci"]) == [*TIRADS.multi["echogenic_foci"], "none"]  # none scored against
    assert prompts["echogenic_foci"]["none"][0] == "Thyroid nodule with no echogenic foci."
    birads = BIRADS.value_prompts()
    assert birads["margin"]["spiculated"][0] == "Breast mass with spiculated margins."
    assert set(birads["calcification"]) == {"micro", "macro", "none"}


def test_value_prompt_templates_can_be_replaced_and_are_checked():
    prompts = TIRADS.value_prompts({"shape": ["A {} nodule."]})
    assert prompts["shape"] == {"wider_than_tall": ["A wider-than-tall nodule."],
                                "taller_than_wide": ["A taller-than-wide nodule."]}
    assert prompts["margin"] == TIRADS.value_prompts()["margin"]  # the others keep the lexicon's
    with pytest.raises(ValueError, match="which ACR TI-RADS lacks"):
        TIRADS.value_prompts({"orientation": ["{}"]})
    with pytest.raises(ValueError, match="one '\\{\\}'"):
        TIRADS.value_prompts({"shape": ["no placeholder"]})


def test_caption_prompts_are_every_lexicon_caption_with_the_value():
    from usvl.data.synthetic.captions import thyroid_caption

    prompts = TIRADS.value_prompts(mode="caption")
    sizes = {name: len(TIRADS.prompt_values(name)) for name in TIRADS.descriptors}  # foci: 4 kinds + none
    for name, values in prompts.items():
        others = 1
        for other, size in sizes.items():
            others *= size if other != name else 1
        for value, captions in values.items():
            assert len(captions) == len(set(captions)) == others, (name, value)
            assert all(TIRADS.phrases[name][value] in caption for caption in captions)
    nodule = {"composition": "solid", "echogenicity": "hypoechoic", "shape": "taller_than_wide",
              "margin": "smooth", "echogenic_foci": "punctate"}
    assert thyroid_caption(nodule) in prompts["margin"]["smooth"]  # the generator's own caption wording
    assert BIRADS.value_prompts(mode="caption")["calcification"]["none"][0].endswith("no calcifications.")
    with pytest.raises(ValueError, match="mode must be"):
        TIRADS.value_prompts(mode="sentence")


def _task(**kwargs) -> ZeroShotLexiconTask:
    torch.manual_seed(0)
    return ZeroShotLexiconTask(TinyViTCLIP(depth=2, feature_taps=(1,)), num_classes=2,
                               class_names=["benign", "malignant"], channels_last=False, temperature=0.1, **kwargs)


def _features(embedding: torch.Tensor) -> ImageFeatures:
    return ImageFeatures(global_embedding=embedding)


def test_descriptor_logits_are_scaled_similarities_with_the_value_prototypes():
    task = _task(prompts="phrase", multi_label="pairwise")
    prototypes = task.value_prototypes()
    for name, rows in prototypes.items():
        values = task.value_prompts[name]
        assert rows.shape == (len(values), task.encoder.embed_dim)
        expected = torch.stack([F.normalize(F.normalize(task.encoder.encode_text(prompts).float(), dim=-1).mean(0),
                                            dim=-1) for prompts in values.values()])
        assert torch.allclose(rows, expected, atol=1e-5), name
    image = torch.randn(3, task.encoder.embed_dim)
    logits = task.describe(_features(image))
    unit = F.normalize(image, dim=-1)
    assert torch.allclose(logits["margin"], 10.0 * unit @ prototypes["margin"].t(), atol=1e-4)
    foci = unit @ prototypes["echogenic_foci"].t()
    assert logits["echogenic_foci"].shape == (3, len(TIRADS.multi["echogenic_foci"]))
    assert torch.allclose(logits["echogenic_foci"], 10.0 * (foci[:, :-1] - foci[:, -1:]), atol=1e-4)


def test_exclusive_multi_label_reads_each_values_softmax_share_among_the_values_and_none():
    task = _task(prompts="phrase")
    prototypes = task.value_prototypes()["echogenic_foci"]
    image = torch.randn(5, task.encoder.embed_dim)
    logits = task.describe(_features(image))["echogenic_foci"]
    shares = (10.0 * F.normalize(image, dim=-1) @ prototypes.t()).softmax(dim=-1)
    assert torch.allclose(logits.sigmoid(), shares[:, :-1], atol=1e-5)
    assert (logits.sigmoid().sum(dim=1) < 1.0).all()  # at most one value reads as present


def test_prompt_options_are_checked():
    with pytest.raises(ValueError, match="set prompts to 'phrase'"):
        _task(prompt_templates={"shape": ["A {} nodule."]})
    with pytest.raises(ValueError, match="multi_label must be"):
        _task(multi_label="any")
    assert _task(prompts="phrase", prompt_templates={"shape": ["A {} nodule."]}).value_prompts["shape"][
        "taller_than_wide"] == ["A taller-than-wide nodule."]


@pytest.mark.parametrize("mode", ["phrase", "caption"])
def test_an_image_at_a_values_prototype_reads_that_value(mode):
    task = _task(prompts=mode, multi_label="pairwise")
    prototypes = task.value_prototypes()
    composition = list(task.value_prompts["composition"]).index("spongiform")
    punctate = list(task.value_prompts["echogenic_foci"]).index("punctate")
    none = len(task.value_prompts["echogenic_foci"]) - 1
    images = torch.stack([prototypes["composition"][composition], prototypes["echogenic_foci"][punctate],
                          prototypes["echogenic_foci"][none]])
    probabilities = task.descriptor_probabilities({k: v[None] for k, v in task.describe(_features(images)).items()})
    decided = TIRADS.decide({k: v[0].tolist() for k, v in probabilities.items()})
    assert decided["composition"] == "spongiform"
    assert probabilities["echogenic_foci"][1, punctate] > 0.5  # the punctate prototype reads punctate foci
    assert (probabilities["echogenic_foci"][2] < 0.5).all()  # the none prototype reads no foci


def test_zeroshot_lexicon_refuses_to_fit():
    with pytest.raises(RuntimeError, match="trains nothing"):
        _task().on_fit_start()
