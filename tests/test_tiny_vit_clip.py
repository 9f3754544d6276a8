import pytest
import torch

from usvl.models.adapters import MONA_VARIANTS, AdaptedModule, MonaAdapter
from usvl.models.encoders import (
    TinyViTCLIP,
    VisionLanguageEncoder,
    build_encoder,
    list_encoders,
    vit_grid_size,
    vit_num_prefix_tokens,
    vit_patch_size,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoder() -> TinyViTCLIP:
    return TinyViTCLIP()


def test_image_features_have_the_documented_shapes(encoder):
    encoder.eval()
    features = encoder.encode_image(torch.randn(2, 3, 64, 64))
    assert features.global_embedding.shape == (2, encoder.embed_dim) == (2, 32)
    assert encoder.feature_dims == [64, 64, 64]
    assert [tuple(m.shape) for m in features.maps] == [(2, 64, 8, 8)] * 3
    assert features.pooled.shape == (2, 64)


def test_any_input_divisible_by_the_patch_size_works(encoder):
    encoder.eval()
    features = encoder.encode_image(torch.randn(1, 3, 48, 80))
    assert [tuple(m.shape) for m in features.maps] == [(1, 64, 6, 10)] * 3
    assert encoder.grid_size((48, 80)) == (6, 10)
    with pytest.raises(ValueError, match="not divisible"):
        encoder.encode_image(torch.randn(1, 3, 50, 64))


def test_text_embeddings_use_the_minilm_tokenizer(encoder):
    raw = encoder.encode_text_raw(["a benign lymph node", "a malignant nodule with microcalcifications"])
    assert raw.shape == (2, encoder.text_dim) == (2, 64)
    assert encoder.encode_text(["a", "b", "c"]).shape == (3, 32)
    assert encoder.text_tower.tokenizer.vocab_size == 30522


def test_towers_are_frozen_and_stay_in_eval_mode(encoder):
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {
        "image_projection.weight",
        "image_projection.bias",
        "text_projection.weight",
        "text_projection.bias",
    }
    encoder.train()
    assert encoder.training and encoder.image_projection.training
    assert not encoder.image_tower.training and not encoder.text_tower.training
    assert not any(m.training for m in encoder.image_tower.modules())


def test_adapter_points_and_identity(encoder):
    assert encoder.adapter_points == [(f"image_tower.blocks.{i}", 64) for i in range(4)]
    assert encoder.encoder_id.startswith("test/tiny-vit-clip@")
    assert isinstance(encoder, VisionLanguageEncoder)
    assert len(encoder.image_mean) == len(encoder.image_std) == 3


def test_seeded_towers_are_reproducible_and_the_id_tracks_the_config(encoder):
    again = TinyViTCLIP()
    assert again.encoder_id == encoder.encoder_id
    for (name, a), (_, b) in zip(
        encoder.image_tower.state_dict().items(), again.image_tower.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert TinyViTCLIP(seed=1).encoder_id != encoder.encoder_id
    assert TinyViTCLIP(depth=2, feature_taps=(0, 1)).encoder_id != encoder.encoder_id


def test_registry_builds_it_by_name():
    assert "test/tiny-vit-clip" in list_encoders()
    built = build_encoder("test/tiny-vit-clip", embed_dim=16, depth=2, feature_taps=(1,))
    assert isinstance(built, TinyViTCLIP)
    assert built.encode_image(torch.randn(1, 3, 32, 32)).global_embedding.shape == (1, 16)


def test_invalid_taps_and_pooling_are_rejected():
    with pytest.raises(ValueError, match="feature_taps"):
        TinyViTCLIP(depth=2, feature_taps=(2,))
    with pytest.raises(ValueError, match="pooling"):
        TinyViTCLIP(pooling="max")


def test_mean_pooling():
    encoder = TinyViTCLIP(pooling="mean").eval()
    assert encoder.encode_image(torch.randn(1, 3, 64, 64)).pooled.shape == (1, 64)


def test_vit_helpers_on_timm_towers(encoder):
    from timm.models.vision_transformer import VisionTransformer

    assert vit_patch_size(encoder.image_tower) == (8, 8)
    assert vit_grid_size(encoder.image_tower) == (8, 8)
    assert vit_grid_size(encoder.image_tower, 96) == (12, 12)
    assert vit_grid_size(encoder.image_tower, (48, 80)) == (6, 10)
    assert vit_num_prefix_tokens(encoder.image_tower) == encoder.num_prefix_tokens == 1
    registers = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=1, reg_tokens=2, num_classes=0
    )
    assert vit_num_prefix_tokens(registers) == 3
    with pytest.raises(TypeError):
        vit_grid_size(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("variant", MONA_VARIANTS)
def test_mona_runs_on_vit_tokens_of_any_grid(variant):
    encoder = TinyViTCLIP(depth=2, feature_taps=(0, 1)).eval()
    square, wide = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 48, 80)
    before = encoder.encode_image(square).global_embedding
    layers = MonaAdapter(variant=variant, bottleneck=16).apply(encoder)
    assert len(layers) == 2 and all(isinstance(b, AdaptedModule) for b in encoder.image_tower.blocks)
    encoder.eval()
    # Zero-initialised Mona is an identity, so the adapted encoder starts equal to the frozen one.
    assert torch.allclose(encoder.encode_image(square).global_embedding, before, atol=1e-6)
    features = encoder.encode_image(wide)
    assert [tuple(m.shape) for m in features.maps] == [(2, 64, 6, 10)] * 2
    for layer in layers:
        torch.nn.init.normal_(layer.up.weight, std=0.1)
    assert not torch.allclose(encoder.encode_image(square).global_embedding, before, atol=1e-4)
