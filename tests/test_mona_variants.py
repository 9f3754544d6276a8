import pytest
import torch
import torch.nn.functional as F

from usvl.models.adapters import (
    MONA_VARIANTS,
    AdaptedModule,
    FrequencyFilter,
    MonaAdapter,
    MonaLayer,
    MultiScaleDepthwiseOp,
    NoiseAwareDepthwiseOp,
    build_mona_op,
)
from usvl.models.encoders import LiTEffNetMiniLM

torch.set_num_threads(1)

# Per-layer parameter counts at D=768, bottleneck 64 (reference table, section 2.4). ``freq``/``hybrid`` replace the
# reference's 64-scalar filter by a 64 x 14 x 8 = 7,168-weight frequency mask.
REFERENCE_COUNTS = {"baseline": 111_872, "noise_aware": 112_963, "freq": 111_936, "hybrid": 113_027}
FILTER_EXTRA = 64 * 14 * 8 - 64
EXPECTED_COUNTS = {
    "baseline": 111_872,
    "noise_aware": 112_963,
    "freq": 111_936 + FILTER_EXTRA,
    "hybrid": 113_027 + FILTER_EXTRA,
}


def checkerboard(height: int, width: int) -> torch.Tensor:
    rows = torch.arange(height).view(-1, 1)
    cols = torch.arange(width).view(1, -1)
    return 1.0 - 2.0 * ((rows + cols) % 2).float()


def low_pass(filt: FrequencyFilter, cutoff: float = 0.25) -> None:
    rows, cols = filt.frequencies()
    radius = (rows.view(-1, 1) ** 2 + cols.view(1, -1) ** 2).sqrt()
    with torch.no_grad():
        filt.weight.copy_((radius <= cutoff).float().expand_as(filt.weight))


@pytest.mark.parametrize("variant", MONA_VARIANTS)
def test_parameter_counts_at_vit_b(variant):
    layer = MonaLayer(768, 64, variant=variant)
    count = sum(p.numel() for p in layer.parameters())
    assert count == EXPECTED_COUNTS[variant]
    if variant in ("baseline", "noise_aware"):
        assert count == REFERENCE_COUNTS[variant]


@pytest.mark.parametrize("variant", MONA_VARIANTS)
def test_shapes_on_maps_and_tokens_and_identity_at_init(variant):
    layer = MonaLayer(24, bottleneck=8, variant=variant).eval()
    maps = torch.randn(2, 24, 9, 7)
    tokens = torch.randn(2, 1 + 6 * 6, 24)
    assert torch.allclose(layer(maps), maps)
    assert torch.allclose(layer(tokens), tokens)
    torch.nn.init.normal_(layer.up.weight, std=0.1)
    assert layer(maps).shape == maps.shape
    assert layer(tokens).shape == tokens.shape
    assert not torch.allclose(layer(tokens), tokens)


@pytest.mark.parametrize("variant", MONA_VARIANTS)
def test_prefix_tokens_and_explicit_grid(variant):
    layer = MonaLayer(16, bottleneck=8, zero_init=False, variant=variant, num_prefix_tokens=2, grid_size=(3, 5))
    tokens = torch.randn(2, 2 + 15, 16)
    assert layer(tokens).shape == tokens.shape
    assert layer(torch.randn(2, 2 + 8, 16), grid_size=(2, 4)).shape == (2, 10, 16)
    with pytest.raises(ValueError, match="grid_size"):
        layer(torch.randn(2, 2 + 16, 16))
    layer.grid_size = None
    with pytest.raises(ValueError, match="square"):
        layer(torch.randn(2, 2 + 15, 16))


@pytest.mark.parametrize("variant", MONA_VARIANTS)
def test_cls_token_skips_the_conv_op(variant):
    torch.manual_seed(0)
    layer = MonaLayer(16, bottleneck=8, zero_init=False, variant=variant).eval()
    tokens = torch.randn(2, 1 + 4 * 4, 16)
    out = layer(tokens)
    # MLP-only path: LN/scale, down, GELU, up, residual; no conv op.
    u = layer.norm(tokens) * layer.gamma + tokens * layer.gamma_x
    h = F.linear(u, layer.down.weight.flatten(1), layer.down.bias)
    mlp_only = tokens + F.linear(F.gelu(h), layer.up.weight.flatten(1), layer.up.bias)
    assert torch.allclose(out[:, 0], mlp_only[:, 0], atol=1e-6)
    assert not torch.allclose(out[:, 1:], mlp_only[:, 1:], atol=1e-3)
    # The CLS output does not depend on the patch tokens.
    shuffled = tokens.clone()
    shuffled[:, 1:] = torch.randn_like(shuffled[:, 1:])
    assert torch.allclose(layer(shuffled)[:, 0], out[:, 0], atol=1e-6)


def test_tokens_and_maps_share_the_same_maths():
    torch.manual_seed(0)
    layer = MonaLayer(16, bottleneck=8, zero_init=False, variant="hybrid", num_prefix_tokens=0).eval()
    maps = torch.randn(2, 16, 5, 6)
    tokens = maps.flatten(2).transpose(1, 2)
    from_tokens = layer(tokens, grid_size=(5, 6)).transpose(1, 2).reshape_as(maps)
    assert torch.allclose(from_tokens, layer(maps), atol=1e-5)


def test_noise_aware_weights_sum_to_one_and_weight_the_branches():
    torch.manual_seed(0)
    op = NoiseAwareDepthwiseOp(16)
    x = torch.randn(3, 16, 6, 6)
    weights = op.noise(x)
    assert weights.shape == (3, 3, 1, 1)
    assert torch.allclose(weights.sum(dim=1), torch.ones(3, 1, 1))
    assert (weights > 0).all()
    y = sum(weights[:, k : k + 1] * conv(x) for k, conv in enumerate(op.convs)) + x
    assert torch.allclose(op(x), y + op.mixer(y), atol=1e-5)


def test_identity_filter_reduces_freq_to_baseline_and_hybrid_to_noise_aware():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 10, 12)
    for variant, plain_variant in (("freq", "baseline"), ("hybrid", "noise_aware")):
        op = build_mona_op(variant, 8)
        plain = build_mona_op(plain_variant, 8)
        plain.load_state_dict(op.state_dict(), strict=False)
        assert torch.allclose(op(x), plain(x), atol=1e-5)


def test_freq_residual_uses_unfiltered_input():
    torch.manual_seed(0)
    op = build_mona_op("freq", 4)
    with torch.no_grad():
        op.filter.weight.zero_()
    x = torch.randn(1, 4, 14, 14)
    # With an all-zero mask the branches see zeros: y = mean(bias_k) + x.
    bias = sum(conv.bias for conv in op.convs).view(1, -1, 1, 1) / 3
    y = bias + x
    assert torch.allclose(op(x), y + op.mixer(y), atol=1e-5)


@pytest.mark.parametrize("size", [(14, 14), (28, 20)])
def test_frequency_filter_is_not_channel_scaling(size):
    filt = FrequencyFilter(2)
    x = torch.randn(1, 2, *size)
    assert torch.allclose(filt(x), x, atol=1e-5)  # ones: identity at any size
    low_pass(filt)
    board = checkerboard(*size)
    inputs = torch.stack([torch.full(size, 3.0), 2.0 + board]).unsqueeze(0)
    out = filt(inputs)
    assert torch.allclose(out[0, 0], torch.full(size, 3.0), atol=1e-5)  # constant kept
    assert torch.allclose(out[0, 1], torch.full(size, 2.0), atol=1e-5)  # checkerboard removed, DC kept
    # No per-channel gain reproduces this: the best least-squares gain leaves a large residual.
    x1, y1 = inputs[0, 1], out[0, 1]
    gain = (x1 * y1).sum() / (x1 * x1).sum()
    assert (y1 - gain * x1).abs().max() > 0.5
    # The reference formulation (one real scalar per channel over all bins) is exactly channel scaling.
    phi = torch.tensor([0.3, 1.7]).view(1, 2, 1, 1)
    reference = torch.fft.irfft2(torch.fft.rfft2(inputs) * phi, s=size)
    assert torch.allclose(reference, phi * inputs, atol=1e-5)


def test_mask_is_used_bin_for_bin_at_native_size_and_resampled_otherwise():
    filt = FrequencyFilter(3, freq_size=(14, 8))
    with torch.no_grad():
        filt.weight.uniform_()
    native = filt.mask(14, 14)
    assert native.shape == (3, 14, 8)
    assert torch.equal(torch.fft.fftshift(native, dim=1), filt.weight)
    assert filt.mask(20, 30).shape == (3, 20, 16)
    assert filt.mask(9, 7).shape == (3, 9, 4)
    # Same physical frequencies at a doubled size: the DC and the Nyquist corner keep their gains.
    doubled = filt.mask(28, 26)
    assert torch.allclose(doubled[:, 0, 0], filt.weight[:, 7, 0])
    assert torch.allclose(doubled[:, 14, 13], filt.weight[:, 0, 7])


@pytest.mark.parametrize("variant", ["freq", "hybrid"])
def test_gradient_reaches_the_frequency_mask(variant):
    torch.manual_seed(0)
    layer = MonaLayer(16, bottleneck=8, zero_init=False, variant=variant)
    layer(torch.randn(2, 1 + 5 * 5, 16)).square().mean().backward()
    grad = layer.op.filter.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert grad.std() > 0  # not one scalar per channel: bins get different gradients
    if variant == "hybrid":
        assert layer.op.noise.reduce.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", MONA_VARIANTS)
def test_two_input_sizes(variant):
    layer = MonaLayer(16, bottleneck=8, zero_init=False, variant=variant).eval()
    for side in (14, 10):
        assert layer(torch.randn(1, 1 + side * side, 16)).shape == (1, 1 + side * side, 16)
    for size in ((14, 14), (11, 17)):
        assert layer(torch.randn(1, 16, *size)).shape == (1, 16, *size)


def test_baseline_op_class_is_the_baseline_variant():
    assert type(build_mona_op("baseline", 8)) is MultiScaleDepthwiseOp
    with pytest.raises(ValueError, match="Unknown Mona variant"):
        build_mona_op("freq_enhanced", 8)


def test_adapter_builds_variants_and_rejects_unknown():
    with pytest.raises(ValueError, match="Unknown Mona variant"):
        MonaAdapter(variant="fractional")
    encoder = LiTEffNetMiniLM(embed_dim=32)
    layers = MonaAdapter(variant="hybrid", bottleneck=8, points=[-1], freq_size=(6, 4)).apply(encoder)
    assert len(layers) == 1 and layers[0].variant == "hybrid"
    assert layers[0].op.filter.weight.shape[1:] == (6, 4)
    assert isinstance(encoder.image_tower.blocks[6], AdaptedModule)
    encoder.encode_image(torch.randn(1, 3, 64, 64))
