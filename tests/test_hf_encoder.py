import pytest
import torch

from usvl.models.adapters import MonaAdapter
from usvl.models.encoders import MissingWeightsError, build_encoder
from usvl.models.encoders.weights import MINILM_L6_V2

TINY_LAYERS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2)


def save_tiny(folder, family: str):
    """A tiny random CLIP/SigLIP with a real (MiniLM) tokenizer, saved like a hub checkpoint."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    tokenizer = AutoTokenizer.from_pretrained(str(MINILM_L6_V2.resolve(verify=False).parent), local_files_only=True)
    text = dict(TINY_LAYERS, vocab_size=tokenizer.vocab_size, max_position_embeddings=64,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                eos_token_id=tokenizer.sep_token_id)
    vision = dict(TINY_LAYERS, image_size=32, patch_size=8)
    torch.manual_seed(0)
    if family == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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
