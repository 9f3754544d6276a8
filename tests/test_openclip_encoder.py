import pytest
import torch

from usvl.models.adapters import MonaAdapter
from usvl.models.encoders import MissingWeightsError, build_encoder, list_encoders

BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@pytest.fixture(scope="module")
def clip_b16():
    torch.manual_seed(0)
    return build_encoder("openclip/ViT-B-16", allow_random=True, image_size=64)


def test_family_is_listed_and_resolved_by_prefix():
    assert "openclip/<model>" in list_encoders("openclip/*")


def test_features_text_and_identity_projections(clip_b16):
    features = clip_b16.encode_image(torch.randn(2, 3, 64, 64))
    assert features.global_embedding.shape == (2, 512)
    assert [tuple(m.shape) for m in features.maps] == [(2, 768, 4, 4)] * 3
    assert torch.allclose(features.global_embedding, features.pooled, atol=1e-6)
    assert clip_b16.encode_text(["a hypoechoic nodule"]).shape == (1, 512)
    assert clip_b16.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_mona_after_a_vit_block_matches_reference_parameter_count(clip_b16):
    layers = MonaAdapter(points=[-1]).apply(clip_b16)
    assert sum(p.numel() for p in layers[0].parameters()) == 111_872
    trainable = {n.split(".")[0] for n, p in clip_b16.named_parameters() if p.requires_grad}
    assert trainable == {"model", "image_projection", "text_projection"}
    assert all(".adapter." in n for n, p in clip_b16.model.named_parameters() if p.requires_grad)
    assert clip_b16.encode_image(torch.randn(1, 3, 64, 64)).global_embedding.shape == (1, 512)


def test_no_weights_named_is_an_error():
    with pytest.raises(MissingWeightsError, match="allow_random"):
        build_encoder("openclip/ViT-B-16")


def test_hub_model_offline_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(MissingWeightsError, match="BiomedCLIP"):
        build_encoder(f"openclip/{BIOMEDCLIP}", cache_dir=str(tmp_path / "cache"))


@pytest.mark.slow
def test_biomedclip_from_the_hub_when_online():
    try:
        encoder = build_encoder(f"openclip/{BIOMEDCLIP}")
    except MissingWeightsError as error:
        pytest.skip(f"hub unreachable or weights not cached: {error}")
    assert encoder.encode_image(torch.randn(1, 3, 224, 224)).global_embedding.shape[-1] == encoder.embed_dim
