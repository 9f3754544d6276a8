"""Folding eval-mode batch norms into convolutions: same outputs and gradients, nothing in the model changed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from usvl.models.adapters import MonaAdapter
from usvl.models.encoders import LiTEffNetMiniLM
from usvl.models.fold_batch_norm import (
    FoldedConvForward,
    conv_batch_norm_pairs,
    fold_batch_norms,
    unfold_batch_norms,
)


def _images(batch: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _randomise_batch_norms(model: nn.Module) -> None:
    """Non-trivial statistics and affine parameters, so a wrong fold shows."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            count = module.num_features
            module.running_mean.copy_(torch.randn(count, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(count, generator=generator))
            module.bias.data.copy_(torch.randn(count, generator=generator))


@pytest.fixture(scope="module")
def encoder_pair():
    """The embedded encoder (random weights) twice: ``folded`` will fold on first use, ``plain`` is kept unfolded."""
    torch.manual_seed(0)
    plain = LiTEffNetMiniLM(embed_dim=32, pretrained=False).eval()
    _randomise_batch_norms(plain)
    plain._batch_norms_checked = True  # never folds
    folded = copy.deepcopy(plain)
    folded._batch_norms_checked = False
    return folded, plain


def test_the_embedded_tower_folds_every_conv_batch_norm_pair_with_equal_outputs(encoder_pair):
    folded, plain = encoder_pair
    images = _images()
    with torch.no_grad():
        pooled, maps = folded.tower_features(images)
        reference_pooled, reference_maps = plain.tower_features(images)
    folded_convs = [m for m in folded.modules() if isinstance(m.__dict__.get("forward"), FoldedConvForward)]
    assert len(folded_convs) == 49  # stem, 16 blocks (2-3 convs each), head
    torch.testing.assert_close(pooled, reference_pooled, atol=1e-4, rtol=1e-4)
    for folded_map, reference_map in zip(maps, reference_maps, strict=True):
        torch.testing.assert_close(folded_map, reference_map, atol=1e-4, rtol=1e-4)


def test_folding_changes_no_parameter_buffer_or_state_dict_key(encoder_pair):
    folded, plain = encoder_pair
    with torch.no_grad():
        folded.tower_features(_images())
    folded_state, plain_state = folded.state_dict(), plain.state_dict()
    assert folded_state.keys() == plain_state.keys()
    for key, value in plain_state.items():
        assert torch.equal(folded_state[key], value), key


def test_gradients_through_a_folded_tower_match_the_unfolded_ones():
    torch.manual_seed(0)
    plain = LiTEffNetMiniLM(embed_dim=32, pretrained=False)
    _randomise_batch_norms(plain)
    MonaAdapter(points=[2, 4]).apply(plain)
    plain.train()
    plain._batch_norms_checked = True
    folded = copy.deepcopy(plain)
    folded._batch_norms_checked = False
    gradients = []
    for encoder in (folded, plain):
        torch.manual_seed(2)  # the same dropout masks in the adapters
        encoder.zero_grad()
        encoder.encode_image(_images()).global_embedding.square().sum().backward()
        gradients.append({n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    for name, gradient in gradients[1].items():
        torch.testing.assert_close(gradients[0][name], gradient, atol=1e-4, rtol=1e-3, msg=name)


class _ConvActBatchNorm(nn.Module):
    """A conv and a batch norm registered next to each other, with an activation between them in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.bn(torch.relu(self.conv(x)))))


def test_only_a_batch_norm_fed_directly_by_a_convolution_is_folded():
    model = _ConvActBatchNorm().eval()
    _randomise_batch_norms(model)
    x = _images(2, 8)
    pairs = conv_batch_norm_pairs(model, lambda: model(x))
    assert pairs == [(model.conv2, model.bn2)]
    with torch.no_grad():
        expected = model(x)
        assert fold_batch_norms(model, lambda: model(x)) == 1
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        assert unfold_batch_norms(model) == 1
        torch.testing.assert_close(model(x), expected)


def test_a_training_batch_norm_takes_its_own_path_and_the_search_changes_no_statistic():
    model = _ConvActBatchNorm().train()
    x = _images(2, 8)
    statistics = model.bn2.running_mean.clone()
    fold_batch_norms(model, lambda: model(x))
    assert model.training and model.bn2.training  # modes restored after the search
    assert torch.equal(model.bn2.running_mean, statistics)  # the search ran in eval mode
    model(x)
    assert not torch.equal(model.bn2.running_mean, statistics)  # training batch norm: batch statistics, updated


def test_usvl_fold_batch_norms_0_keeps_the_tower_unfolded(monkeypatch):
    monkeypatch.setenv("USVL_FOLD_BATCH_NORMS", "0")
    encoder = LiTEffNetMiniLM(embed_dim=32, pretrained=False).eval()
    with torch.no_grad():
        encoder.tower_features(_images(1))
    assert not any(isinstance(m.__dict__.get("forward"), FoldedConvForward) for m in encoder.modules())


class _ConvInPlaceUpdate(nn.Module):
    """A convolution whose output is changed in place (as a LoRA update may be) before its batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.delta = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        out += self.delta(x)
        return self.bn(out)


def test_a_convolution_output_changed_in_place_before_its_batch_norm_is_not_folded():
    model = _ConvInPlaceUpdate().eval()
    x = _images(2, 8)
    assert conv_batch_norm_pairs(model, lambda: model(x)) == []


def test_lora_wrapped_convolutions_keep_their_batch_norms_apart():
    from usvl.models.adapters import LoRAAdapter

    encoder = LiTEffNetMiniLM(embed_dim=16, pretrained=False)
    _randomise_batch_norms(encoder)
    layers = LoRAAdapter(r=4, dropout=0.0).apply(encoder)
    for layer in layers:
        nn.init.normal_(layer.lora_B["default"].weight, std=0.05)
    encoder.eval()
    reference = copy.deepcopy(encoder)
    reference._batch_norms_checked = True
    images = _images(2)
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode_image(images).global_embedding,
                                   reference.encode_image(images).global_embedding, atol=1e-4, rtol=1e-4)
    folded = sum(isinstance(m.__dict__.get("forward"), FoldedConvForward) for m in encoder.modules())
    assert folded == 49 - len(layers)


def test_lora_applied_after_a_first_forward_pass_unfolds_what_it_wraps():
    from usvl.models.adapters import LoRAAdapter

    encoder = LiTEffNetMiniLM(embed_dim=16, pretrained=False).eval()
    _randomise_batch_norms(encoder)
    images = _images(2)
    with torch.no_grad():
        encoder.encode_image(images)  # folds all 49 pairs
    layers = LoRAAdapter(r=4, dropout=0.0).apply(encoder)
    for layer in layers:
        nn.init.normal_(layer.lora_B["default"].weight, std=0.05)
    reference = copy.deepcopy(encoder)
    unfold_batch_norms(reference)
    reference._batch_norms_checked = True
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode_image(images).global_embedding,
                                   reference.encode_image(images).global_embedding, atol=1e-4, rtol=1e-4)
