import pytest
import torch

from usvl.models.adapters import MONA_VARIANTS, AdaptedModule, MonaAdapter
from usvl.models.encoders import (
    OpenCLIPEncoder,
    TinyViTCLIP,
    VisionLanguageEncoder,
    build_encoder,
    list_encoders,
    tokens_to_map,
    vit_grid_size,
    vit_num_prefix_tokens,
    vit_patch_size,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoder() -> TinyViTCLIP:
    return TinyViTCLIP()


def test_it_is_a_tiny_configuration_of_the_real_open_clip_backend(encoder):
    import open_clip

    assert isinstance(encoder, OpenCLIPEncoder)
    assert type(encoder.model) is open_clip.CLIP
    blocks = encoder.model.visual.transformer.resblocks
    assert len(blocks) == 4 and isinstance(blocks[0].attn, torch.nn.MultiheadAttention)
    assert encoder.lora_targets == r"model\.visual\.transformer\.resblocks\.\d+\.attn"


def test_image_features_have_the_documented_shapes(encoder):
    encoder.eval()
    features = encoder.encode_image(torch.randn(2, 3, 64, 64))
    assert features.global_embedding.shape == (2, encoder.embed_dim) == (2, 32)
    assert encoder.feature_dims == [64, 64, 64]
    assert [tuple(m.shape) for m in features.maps] == [(2, 64, 8, 8)] * 3
    assert features.pooled.shape == (2, 32)


def test_maps_are_the_tapped_blocks_patch_tokens(encoder):
    encoder.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = encoder.model.visual.forward_intermediates(images, indices=[1, 2, 3], output_fmt="NLC",
                                                            intermediates_only=True)
        features = encoder.encode_image(images)
    # open_clip's own intermediates hold the patch tokens only; the hooks see the CLS token too and drop it.
    for tapped, reference in zip(features.maps, tokens["image_intermediates"], strict=True):
        assert torch.allclose(tapped, tokens_to_map(reference, 0), atol=1e-6)


def test_text_embeddings_use_the_offline_open_clip_tokenizer(encoder):
    from open_clip.tokenizer import SimpleTokenizer

    raw = encoder.encode_text_raw(["a benign lymph node", "a malignant nodule with microcalcifications"])
    assert raw.shape == (2, encoder.text_dim) == (2, 32)
    assert encoder.encode_text(["a", "b", "c"]).shape == (3, 32)
    assert isinstance(encoder.tokenizer, SimpleTokenizer) and encoder.tokenizer.context_length == 64
    assert TinyViTCLIP(max_length=16, depth=1, feature_taps=(0,)).tokenizer.context_length == 16


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
    assert not any(m.training for m in encoder.model.modules())


def test_adapter_points_and_identity(encoder):
    assert encoder.adapter_points == [(f"model.visual.transformer.resblocks.{i}", 64) for i in range(4)]
    assert encoder.encoder_id.startswith("test/tiny-vit-clip@")
    assert isinstance(encoder, VisionLanguageEncoder)
    assert len(encoder.image_mean) == len(encoder.image_std) == 3


def test_seeded_towers_are_reproducible_and_the_id_tracks_the_config(encoder):
    again = TinyViTCLIP()
    assert again.encoder_id == encoder.encoder_id
    for (name, a), (_, b) in zip(encoder.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert TinyViTCLIP(seed=1).encoder_id != encoder.encoder_id
    assert TinyViTCLIP(depth=2, feature_taps=(0, 1)).encoder_id != encoder.encoder_id


def test_arguments_configure_the_open_clip_model():
    encoder = TinyViTCLIP(embed_dim=16, img_size=32, patch_size=4, width=32, depth=2, heads=4, mlp_ratio=1.0,
                          feature_taps=(0, 1), pooling="mean", text_width=16, text_layers=1, text_heads=1)
    visual = encoder.model.visual
    assert vit_grid_size(visual) == (8, 8) and vit_patch_size(visual) == (4, 4)
    assert visual.transformer.resblocks[0].attn.num_heads == 4 and visual.pool_type == "avg"
    assert visual.transformer.resblocks[0].mlp.c_fc.out_features == 32
    assert encoder.model.transformer.width == 16 and len(encoder.model.transformer.resblocks) == 1
    features = encoder.eval().encode_image(torch.randn(1, 3, 32, 32))
    assert features.global_embedding.shape == (1, 16)
    assert [tuple(m.shape) for m in features.maps] == [(1, 32, 8, 8)] * 2


def test_registry_builds_it_by_name():
    assert "test/tiny-vit-clip" in list_encoders()
    built = build_encoder("test/tiny-vit-clip", embed_dim=16, depth=2, feature_taps=(1,))
    assert isinstance(built, TinyViTCLIP)
    assert built.encode_image(torch.randn(1, 3, 64, 64)).global_embedding.shape == (1, 16)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="feature_taps"):
        TinyViTCLIP(depth=2, feature_taps=(2,))
    with pytest.raises(ValueError, match="pooling"):
        TinyViTCLIP(pooling="max")
    with pytest.raises(ValueError, match="must divide"):
        TinyViTCLIP(width=30, heads=4)


def test_vit_helpers_on_timm_and_open_clip_towers(encoder):
    from timm.models.vision_transformer import VisionTransformer

    visual = encoder.model.visual
    assert vit_patch_size(visual) == (8, 8) and vit_grid_size(visual) == (8, 8)
    assert vit_num_prefix_tokens(visual) == encoder.num_prefix_tokens == 1
    timm_vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=1, reg_tokens=2,
                                 num_classes=0, dynamic_img_size=True)
    assert vit_num_prefix_tokens(timm_vit) == 3
    assert vit_grid_size(timm_vit, 96) == (12, 12)
    assert vit_grid_size(timm_vit, (48, 80)) == (6, 10)
    with pytest.raises(ValueError, match="not divisible"):
        vit_grid_size(visual, (50, 64))
    with pytest.raises(TypeError):
        vit_grid_size(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("variant", MONA_VARIANTS)
def test_mona_runs_on_vit_tokens_and_the_taps_see_its_output(variant):
    encoder = TinyViTCLIP(depth=2, feature_taps=(0, 1)).eval()
    images = torch.randn(2, 3, 64, 64)
    before = encoder.encode_image(images)
    layers = MonaAdapter(variant=variant, bottleneck=16).apply(encoder)
    blocks = encoder.model.visual.transformer.resblocks
    assert len(layers) == 2 and all(isinstance(b, AdaptedModule) for b in blocks)
    encoder.eval()
    # Zero-initialised Mona is an identity, so the adapted encoder starts equal to the frozen one.
    assert torch.allclose(encoder.encode_image(images).global_embedding, before.global_embedding, atol=1e-6)
    for layer in layers:
        torch.nn.init.normal_(layer.up.weight, std=0.1)
    adapted = encoder.encode_image(images)
    assert not torch.allclose(adapted.global_embedding, before.global_embedding, atol=1e-4)
    # The first tapped map is block 0's output after its Mona layer, not the frozen block's output.
    assert not torch.allclose(adapted.maps[0], before.maps[0], atol=1e-4)
    with torch.no_grad():
        tokens = encoder.model.visual.conv1(images).flatten(2).transpose(1, 2)
        cls = encoder.model.visual.class_embedding.expand(2, 1, -1)
        tokens = encoder.model.visual.ln_pre(torch.cat([cls, tokens], 1) + encoder.model.visual.positional_embedding)
        expected = blocks[0].adapter(blocks[0].base(tokens))
    assert torch.allclose(adapted.maps[0], tokens_to_map(expected, 1), atol=1e-5)
