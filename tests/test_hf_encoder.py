import pytest
import torch
from tiny_models import save_tiny_hf_clip

from usvl.models.adapters import MonaAdapter
from usvl.models.encoders import MissingWeightsError, build_encoder


def save_tiny(folder, family: str):
    """A tiny random CLIP/SigLIP with a real (MiniLM) tokenizer, saved like a hub checkpoint."""
    return save_tiny_hf_clip(folder, family)


@pytest.mark.parametrize("family, prefix, embed", [("clip", 1, 16), ("siglip", 0, 32)])
def test_local_folder_encoder(tmp_path, family, prefix, embed):
    encoder = build_encoder(f"hf/{save_tiny(tmp_path / family, family)}", feature_taps=(1, 3))
    assert encoder.num_prefix_tokens == prefix
    features = encoder.encode_image(torch.randn(2, 3, 32, 32))
    assert features.global_embedding.shape == (2, embed)
    assert [tuple(m.shape) for m in features.maps] == [(2, 32, 4, 4)] * 2
    assert torch.allclose(features.global_embedding, features.pooled, atol=1e-6)
    assert encoder.encode_text(["a nodule", "an oval mass"]).shape == (2, embed)
    layers = MonaAdapter(bottleneck=8).apply(encoder)
    assert len(layers) == 4
    assert encoder.encode_image(torch.randn(1, 3, 32, 32)).global_embedding.shape == (1, embed)
    trainable = {n.split(".")[0] for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {"model", "image_projection", "text_projection"}


def test_hub_model_offline_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="huggingface-cli download openai/clip-vit-base-patch16"):
        build_encoder("hf/openai/clip-vit-base-patch16", cache_dir=str(tmp_path))


@pytest.mark.slow
def test_openai_clip_from_the_hub_when_online():
    try:
        encoder = build_encoder("hf/openai/clip-vit-base-patch16")
    except MissingWeightsError as error:
        pytest.skip(f"hub unreachable or weights not cached: {error}")
    assert encoder.encode_image(torch.randn(1, 3, 224, 224)).global_embedding.shape == (1, 512)
