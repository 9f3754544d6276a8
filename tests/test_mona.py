import torch

from usvl.models.adapters import AdaptedModule, MonaAdapter, MonaLayer, NoAdapter
from usvl.models.encoders import LiTEffNetMiniLM


def test_zero_initialised_mona_is_an_identity_and_keeps_shape():
    layer = MonaLayer(40, bottleneck=64)
    x = torch.randn(2, 40, 9, 7)
    layer.eval()
    assert torch.allclose(layer(x), x)
    torch.nn.init.normal_(layer.up.weight)
    assert layer(x).shape == x.shape
    assert not torch.allclose(layer(x), x)


def test_bottleneck_is_capped_at_channels():
    assert MonaLayer(16, bottleneck=64).down.out_channels == 16
    assert MonaLayer(320, bottleneck=64).down.out_channels == 64


def test_mona_adapter_wraps_every_stage_and_only_adapters_train():
    encoder = LiTEffNetMiniLM(embed_dim=32)
    layers = MonaAdapter(bottleneck=32).apply(encoder)
    assert len(layers) == len(encoder.adapter_points) == 7
    assert all(isinstance(stage, AdaptedModule) for stage in encoder.image_tower.blocks)
    for name, parameter in encoder.named_parameters():
        expected = ".adapter." in name or name.startswith(("image_projection", "text_projection"))
        assert parameter.requires_grad == expected, name


def test_selected_points_and_frozen_weights_unchanged_after_a_step():
    encoder = LiTEffNetMiniLM(embed_dim=32)
    MonaAdapter(points=[-2, -1], zero_init=False).apply(encoder)
    adapted = [i for i, stage in enumerate(encoder.image_tower.blocks) if isinstance(stage, AdaptedModule)]
    assert adapted == [5, 6]
    frozen_before = encoder.image_tower.conv_head.weight.clone()
    bn_before = encoder.image_tower.bn2.running_mean.clone()
    encoder.train()
    assert not encoder.image_tower.training and encoder.image_tower.blocks[6].adapter.training
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.1)
    adapter_before = encoder.image_tower.blocks[6].adapter.up.weight.clone()
    encoder.encode_image(torch.randn(2, 3, 64, 64)).global_embedding.square().mean().backward()
    optimizer.step()
    assert torch.equal(encoder.image_tower.conv_head.weight, frozen_before)
    assert torch.equal(encoder.image_tower.bn2.running_mean, bn_before)
    assert not torch.equal(encoder.image_tower.blocks[6].adapter.up.weight, adapter_before)


def test_no_adapter_leaves_encoder_untouched():
    encoder = LiTEffNetMiniLM(embed_dim=32)
    assert NoAdapter().apply(encoder) == []
    assert not any(isinstance(stage, AdaptedModule) for stage in encoder.image_tower.blocks)
