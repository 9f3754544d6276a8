import pytest
import torch
from tiny_models import save_tiny_text_model

from usvl.models.adapters import MonaAdapter
from usvl.models.encoders import MissingWeightsError, build_encoder


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    """A one-layer random BERT with the real MiniLM tokenizer, saved like a hub checkpoint."""
    return str(save_tiny_text_model(tmp_path_factory.mktemp("tiny-bert")))


@pytest.mark.parametrize("image_model, taps, maps", [
    ("resnet18", (1, 3), [(2, 64, 16, 16), (2, 256, 4, 4)]),
    ("vit_tiny_patch16_224", (2, 5), [(2, 192, 4, 4), (2, 192, 4, 4)]),
])
def test_timm_image_and_hf_text_pair(tiny_text_model, image_model, taps, maps):
    encoder = build_encoder(f"timm+hf/{image_model}+{tiny_text_model}", embed_dim=24, feature_taps=taps,
                            image_pretrained=False)
    size = 64
    if image_model.startswith("vit"):
        encoder.image_tower.set_input_size((size, size))
    features = encoder.encode_image(torch.randn(2, 3, size, size))
    assert features.global_embedding.shape == (2, 24)
    assert [tuple(m.shape) for m in features.maps] == maps
    assert encoder.encode_text(["a lesion", "a normal scan"]).shape == (2, 24)
    MonaAdapter(bottleneck=8, points=[-1]).apply(encoder)
    assert encoder.encode_image(torch.randn(1, 3, size, size)).global_embedding.shape == (1, 24)
    trainable = {n.split(".")[0] for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {"image_tower", "image_projection", "text_projection"}


def test_malformed_pair_name():
    with pytest.raises(ValueError, match="timm\\+hf/<image model>\\+<text model>"):
        build_encoder("timm+hf/resnet18")


def test_offline_hub_text_model_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="huggingface-cli download"):
        build_encoder("timm+hf/resnet18+sentence-transformers/all-MiniLM-L6-v2", image_pretrained=False,
                      cache_dir=str(tmp_path))


def test_offline_timm_weights_give_one_clear_error(tiny_text_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="image_weights"):
        build_encoder(f"timm+hf/resnet18.a1_in1k+{tiny_text_model}")
