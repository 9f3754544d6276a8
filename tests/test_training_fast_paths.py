"""Training fast paths: fused AdamW where torch has it (CUDA), and no backward through the frozen layers below the
first trainable parameter (torch's autograd already stops there; these tests hold usvl to it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from usvl.models.adapters import MonaAdapter
from usvl.models.encoders import LiTEffNetMiniLM
from usvl.models.heads import PromptSimilarityHead
from usvl.tasks import ClassificationTask
from usvl.tasks import optim as optim_module
from usvl.tasks.optim import prefer_fused


def _parameters() -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(6, 4, generator=generator)),
            torch.nn.Parameter(torch.randn(4, generator=generator))]


def test_adamw_stays_as_configured_on_a_cpu():
    optimizer = torch.optim.AdamW(_parameters(), lr=1e-3)
    assert prefer_fused(optimizer) is optimizer and optimizer.defaults["fused"] is None


def test_adamw_becomes_fused_with_the_same_settings_and_the_same_step(monkeypatch):
    """The rebuild, checked on the CPU by counting it as a fused device (torch has fused CPU kernels too)."""
    monkeypatch.setattr(optim_module, "FUSED_DEVICE_TYPES", ("cpu",))
    plain_parameters, fused_parameters = _parameters(), _parameters()
    settings = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.01, eps=1e-7)
    plain = torch.optim.AdamW(plain_parameters, **settings)
    fused = prefer_fused(torch.optim.AdamW(fused_parameters, **settings))
    assert fused.defaults["fused"] is True and all(group["fused"] for group in fused.param_groups)
    assert {k: fused.defaults[k] for k in settings} == settings
    for optimizer, parameters in ((plain, plain_parameters), (fused, fused_parameters)):
        for _ in range(3):
            optimizer.zero_grad()
            sum((p ** 2).sum() for p in parameters).backward()
            optimizer.step()
    for a, b in zip(plain_parameters, fused_parameters, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    explicit = torch.optim.AdamW(_parameters(), foreach=False)
    sgd = torch.optim.SGD(_parameters(), lr=0.1)
    assert prefer_fused(explicit) is explicit and prefer_fused(sgd) is sgd


def test_the_task_builds_its_optimizer_through_the_fast_path(monkeypatch):
    monkeypatch.setattr(optim_module, "FUSED_DEVICE_TYPES", ("cpu",))
    task = ClassificationTask(LiTEffNetMiniLM(pretrained=False), PromptSimilarityHead, 2)
    assert task.configure_optimizers().defaults["fused"] is True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_adamw_is_fused_on_cuda():
    optimizer = prefer_fused(torch.optim.AdamW([p.cuda() for p in _parameters()]))
    assert optimizer.defaults["fused"] is True


def _outputs_requiring_grad(task, names: list[str], size: int = 64) -> dict[str, bool]:
    """Train one step; whether each named module's output requires grad (i.e. is part of the backward graph)."""
    recorded: dict[str, bool] = {}
    handles = [task.get_submodule(name).register_forward_hook(
        lambda _m, _i, output, name=name: recorded.__setitem__(name, output.requires_grad)) for name in names]
    task.set_text_embeddings(torch.randn(2, 2, 384))
    task.train()
    images = torch.randint(0, 256, (2, 1, size, size), dtype=torch.uint8)
    F.cross_entropy(task(images), torch.tensor([0, 1])).backward()
    for handle in handles:
        handle.remove()
    return recorded


def _graph_node_names(loss: torch.Tensor) -> set[str]:
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


def test_backward_stops_at_the_first_trainable_parameter():
    """Below the first adapter (stem and stages 0-1 with Mona after stages 2-6) outputs carry no gradient, so
    autograd records nothing there and backward never runs through them; a linear probe records no convolution."""
    adapted = ClassificationTask(LiTEffNetMiniLM(pretrained=False), PromptSimilarityHead, 2,
                                 adapter=MonaAdapter(points=[2, 3, 4, 5, 6], bottleneck=8))
    frozen = ["encoder.image_tower.conv_stem", "encoder.image_tower.blocks.0", "encoder.image_tower.blocks.1"]
    recorded = _outputs_requiring_grad(adapted, [*frozen, "encoder.image_tower.blocks.2"])
    assert recorded == {**dict.fromkeys(frozen, False), "encoder.image_tower.blocks.2": True}
    probe = ClassificationTask(LiTEffNetMiniLM(pretrained=False), PromptSimilarityHead, 2)
    probe.set_text_embeddings(torch.randn(2, 2, 384))
    loss = F.cross_entropy(probe(torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)), torch.tensor([0, 1]))
    nodes = _graph_node_names(loss)
    assert "AddmmBackward0" in nodes and not any("Convolution" in node for node in nodes)
