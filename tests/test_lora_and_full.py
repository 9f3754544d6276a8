import math

import pytest
import torch
from torch import nn

from usvl.models.adapters import (
    DEFAULT_LORA_TARGETS,
    Adapter,
    FullFineTune,
    LoRAAdapter,
    MonaAdapter,
    NoAdapter,
    lora_layers,
)
from usvl.models.adapters.full import NoAdapter as LinearProbe
from usvl.models.encoders import LiTEffNetMiniLM, TinyViTCLIP

torch.set_num_threads(1)

PROJECTIONS = ("image_projection.", "text_projection.")


def tiny(**kwargs) -> TinyViTCLIP:
    return TinyViTCLIP(**{"depth": 2, "feature_taps": (0, 1), **kwargs})


def canonical(name: str) -> str:
    """Parameter name before adaptation: drop the AdaptedModule ``.base`` and peft ``.base_layer`` levels."""
    return name.replace(".base_layer.", ".").replace(".base.", ".")


ADAPTERS = {
    "none": (NoAdapter, lambda name: False),
    "mona-baseline": (lambda: MonaAdapter("baseline", bottleneck=16), lambda name: ".adapter." in name),
    "mona-noise_aware": (lambda: MonaAdapter("noise_aware", bottleneck=16), lambda name: ".adapter." in name),
    "mona-freq": (lambda: MonaAdapter("freq", bottleneck=16, freq_size=(6, 4)), lambda name: ".adapter." in name),
    "mona-hybrid": (lambda: MonaAdapter("hybrid", bottleneck=16), lambda name: ".adapter." in name),
    "lora": (lambda: LoRAAdapter(r=4, alpha=4), lambda name: ".lora_" in name),
    "full": (FullFineTune, lambda name: name.startswith("model.visual.")),
}


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_every_adapter_trains_exactly_its_parameters(kind):
    factory, is_adapter = ADAPTERS[kind]
    encoder = tiny()
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    adapter: Adapter = factory()
    adapter.apply(encoder)
    for name, parameter in encoder.named_parameters():
        assert parameter.requires_grad == (name.startswith(PROJECTIONS) or is_adapter(name)), name

    encoder.train()
    assert not encoder.model.transformer.training
    assert encoder.model.visual.training == (kind == "full")
    new = [n for n, _ in encoder.named_parameters() if canonical(n) not in before]
    assert all(is_adapter(n) for n in new)
    inserted = {n: p.detach().clone() for n, p in encoder.named_parameters() if n in new}
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    features = encoder.encode_image(torch.randn(2, 3, 64, 64))
    loss = features.global_embedding.square().mean() + sum(m.square().mean() for m in features.maps)
    loss = loss + encoder.encode_text(["benign", "malignant"]).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in trainable)
    optimizer.step()

    changed = {
        canonical(n)
        for n, p in encoder.named_parameters()
        if canonical(n) in before and not torch.equal(p, before[canonical(n)])
    }
    for name, parameter in encoder.named_parameters():
        original = canonical(name)
        if original in before and not parameter.requires_grad:
            assert torch.equal(parameter, before[original]), f"frozen {name} changed"
    assert {"image_projection.weight", "text_projection.weight"} <= changed
    assert any(n.startswith("model.visual.") for n in changed) == (kind == "full")
    assert not any(n.startswith("model.") and not n.startswith("model.visual.") for n in changed)
    assert bool(inserted) == kind.startswith(("mona", "lora"))
    if inserted:
        assert any(not torch.equal(p, inserted[n]) for n, p in encoder.named_parameters() if n in inserted)


def test_lora_count_on_vit_b16_is_884736():
    import timm

    holder = nn.Module()
    holder.image_tower = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    adapter = LoRAAdapter(r=16, alpha=16, use_rslora=True)
    targets = adapter.targets(holder)
    assert len(targets) == 24
    assert targets[:2] == ["image_tower.blocks.0.attn.qkv", "image_tower.blocks.0.attn.proj"]
    layers = adapter.apply(holder)
    assert len(layers) == 24
    lora = sum(p.numel() for n, p in holder.named_parameters() if ".lora_" in n)
    per_block = 16 * (768 + 2304) + 16 * (768 + 768)
    assert per_block == 73_728 and lora == 12 * per_block == 884_736
    assert sum(p.numel() for p in holder.parameters() if p.requires_grad) == 884_736
    assert all(layer.scaling["default"] == 16 / math.sqrt(16) == 4.0 for layer in layers)


@pytest.mark.parametrize(("alpha", "use_rslora", "expected"), [(16, True, 4.0), (32, True, 8.0), (16, False, 1.0)])
def test_lora_scaling_is_applied(alpha, use_rslora, expected):
    encoder = tiny()
    adapter = LoRAAdapter(r=16, alpha=alpha, use_rslora=use_rslora, dropout=0.0, target_modules=["mlp.c_fc"])
    assert adapter.scaling == expected
    layer = adapter.apply(encoder)[0]
    assert layer.scaling["default"] == expected
    nn.init.normal_(layer.lora_B["default"].weight)
    layer.eval()
    x = torch.randn(3, 64)
    base = layer.get_base_layer()
    manual = base(x) + expected * layer.lora_B["default"](layer.lora_A["default"](x))
    assert torch.allclose(layer(x), manual, atol=1e-5)


def test_lora_dropout_follows_train_while_the_tower_stays_in_eval():
    encoder = tiny()
    layers = LoRAAdapter(dropout=0.3).apply(encoder)
    encoder.train()
    assert not encoder.model.visual.training
    for layer in layers:
        assert layer.lora_dropout["default"].training
        assert not layer.get_base_layer().training
    frozen = [m for n, m in encoder.model.visual.named_modules() if ".lora_" not in f"{n}."]
    assert len(frozen) > 10 and not any(m.training for m in frozen)
    encoder.eval()
    assert not any(layer.lora_dropout["default"].training for layer in layers)


def test_lora_custom_targets():
    encoder = tiny()
    assert LoRAAdapter(target_modules=["mlp.c_fc"]).targets(encoder) == [
        "model.visual.transformer.resblocks.0.mlp.c_fc",
        "model.visual.transformer.resblocks.1.mlp.c_fc",
    ]
    regex = LoRAAdapter(target_modules=r"model\.visual\.transformer\.resblocks\.1\.mlp\.c_\w+")
    assert len(regex.apply(encoder)) == 2
    assert {n.split(".lora_")[0] for n, _ in encoder.named_parameters() if ".lora_" in n} == {
        "model.visual.transformer.resblocks.1.mlp.c_fc",
        "model.visual.transformer.resblocks.1.mlp.c_proj",
    }
    with pytest.raises(ValueError, match="already holds LoRA"):
        LoRAAdapter().apply(encoder)
    # Only the image tower is ever adapted: the projection is not a valid target.
    with pytest.raises(ValueError, match="match no module"):
        LoRAAdapter(target_modules=["image_projection"]).apply(tiny())
    with pytest.raises(ValueError, match="not Linear"):
        LoRAAdapter(target_modules=["resblocks.0.ln_1"]).apply(tiny())


def test_lora_on_the_embedded_cnn_adapts_its_pointwise_convolutions():
    encoder = LiTEffNetMiniLM(embed_dim=16, pretrained=False)
    targets = LoRAAdapter().targets(encoder)
    assert targets[:2] == ["image_tower.blocks.2.0.conv_pw", "image_tower.blocks.2.0.conv_pwl"]
    assert all(encoder.get_submodule(t).kernel_size == (1, 1) for t in targets)
    assert not any(".conv_dw" in t or "blocks.1." in t for t in targets)
    layers = LoRAAdapter(r=4, dropout=0.0).apply(encoder)
    assert len(layers) == len(targets) == 26
    for layer in layers:
        nn.init.normal_(layer.lora_B["default"].weight, std=0.05)
    encoder.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        adapted = encoder.encode_image(images).global_embedding
        LoRAAdapter.merge(encoder)
        merged = encoder.encode_image(images).global_embedding
    assert torch.allclose(adapted, merged, atol=1e-4)
    assert type(encoder.image_tower.blocks[2][0].conv_pw) is nn.Conv2d


def test_lora_on_open_clip_multihead_attention_matches_the_fused_count():
    from usvl.models.encoders import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder("openclip/ViT-B-16", allow_random=True, image_size=32)
    layers = LoRAAdapter(r=16).apply(encoder)
    assert sum(isinstance(layer, nn.MultiheadAttention) or "MultiheadAttention" in type(layer).__name__
               for layer in layers) == 12
    lora = sum(p.numel() for n, p in encoder.named_parameters() if p.requires_grad and ".lora_" in n)
    assert lora == 884_736
    for _, layer in lora_layers(encoder):
        nn.init.normal_(layer.lora_B["default"].weight, std=0.02)
    images = torch.randn(1, 3, 32, 32)
    encoder.eval()
    with torch.no_grad():
        adapted = encoder.encode_image(images).global_embedding
        assert LoRAAdapter.merge(encoder) == 12
        merged = encoder.encode_image(images).global_embedding
    assert torch.allclose(adapted, merged, atol=1e-4)
    assert type(encoder.model.visual.transformer.resblocks[0].attn) is nn.MultiheadAttention


def test_lora_default_targets_follow_the_encoder():
    encoder = tiny()
    assert LoRAAdapter().resolve(nn.Module()) == ("image_tower", DEFAULT_LORA_TARGETS)
    assert LoRAAdapter().resolve(encoder) == ("model.visual", encoder.lora_targets)
    assert LoRAAdapter(tower="model.visual", target_modules=["c_fc"]).resolve(encoder) == ("model.visual", ["c_fc"])
    with pytest.raises(ValueError, match="has no image tower 'visual'"):
        LoRAAdapter(tower="visual").targets(tiny())


@pytest.mark.parametrize("unload", [True, False])
def test_merging_lora_keeps_outputs(unload):
    encoder = tiny()
    layers = LoRAAdapter(r=4, alpha=8).apply(encoder)
    for layer in layers:
        nn.init.normal_(layer.lora_B["default"].weight, std=0.1)
    encoder.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = encoder.encode_image(images)
        frozen = TinyViTCLIP(depth=2, feature_taps=(0, 1)).eval()
        frozen.load_state_dict({canonical(k): v for k, v in encoder.state_dict().items() if ".lora_" not in k})
        assert not torch.allclose(frozen.encode_image(images).global_embedding, reference.global_embedding, atol=1e-4)
        # peft's LoRA for nn.MultiheadAttention holds a nested LoRA layer on its out_proj: 2 blocks, 4 layers.
        assert LoRAAdapter.merge(encoder, unload=unload) == len(layers) // 2 == 2
        merged = encoder.encode_image(images)
    assert torch.allclose(merged.global_embedding, reference.global_embedding, atol=1e-5)
    for a, b in zip(merged.maps, reference.maps, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    if unload:
        assert not lora_layers(encoder)
        assert type(encoder.model.visual.transformer.resblocks[0].attn) is nn.MultiheadAttention
        assert not any(".lora_" in n for n in encoder.state_dict())
    else:
        assert all(layer.merged for layer in layers)


def test_full_fine_tune_updates_norm_statistics_like_ordinary_training():
    encoder = LiTEffNetMiniLM(embed_dim=16, pretrained=False)
    (tower,) = FullFineTune().apply(encoder)
    assert tower is encoder.image_tower
    assert all(p.requires_grad for p in encoder.image_tower.parameters())
    encoder.train()
    assert encoder.image_tower.training and encoder.image_tower.bn2.training
    running_mean = encoder.image_tower.bn2.running_mean.clone()
    encoder.encode_image(torch.randn(2, 3, 64, 64))
    assert not torch.equal(encoder.image_tower.bn2.running_mean, running_mean)
    encoder.eval()
    assert not encoder.image_tower.training


def test_linear_probe_is_the_no_adapter():
    assert LinearProbe is NoAdapter and NoAdapter().apply(tiny()) == []
    with pytest.raises(ValueError, match="no image tower"):
        FullFineTune(tower="vision").apply(tiny())
