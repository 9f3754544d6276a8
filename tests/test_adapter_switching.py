"""Every adapter kind can be switched in from the command line, with no other edit, and trains end to end: on the
tiny ViT-CLIP and on the embedded EfficientNet-Lite0 (a CNN: LoRA then adapts its 1x1 convolutions).

"Trains" means the adapter's own weights move under the optimiser: each Mona layer's up projection leaves zero, the
frequency filter of ``freq``/``hybrid`` stops being uniform, the noise estimator of ``noise_aware``/``hybrid``
changes other than by weight decay, LoRA's B matrices leave zero, the fully fine-tuned tower changes.
"""

import json
from pathlib import Path

import pytest
import torch

from usvl.cli import run_lightning
from usvl.models.adapters import FullFineTune, LoRAAdapter, MonaAdapter, NoAdapter

REPO = Path(__file__).resolve().parents[1]
SMOKE = [REPO / "configs" / "trainer" / "smoke.yaml", REPO / "configs" / "data" / "tiny.yaml"]
CONFIGS = {"tiny-vit": [REPO / "configs" / "tiny_vit_cls.yaml", *SMOKE],
           "embedded": [REPO / "configs" / "thyroid_cls.yaml", *SMOKE]}

ADAPTERS = {
    "mona-baseline": ["--model.init_args.adapter", "usvl.models.adapters.MonaAdapter"],
    "mona-noise_aware": ["--model.init_args.adapter.init_args.variant", "noise_aware"],
    "mona-freq": ["--model.init_args.adapter.init_args.variant", "freq"],
    "mona-hybrid": ["--model.init_args.adapter.init_args.variant", "hybrid"],
    "lora": ["--model.init_args.adapter", "usvl.models.adapters.LoRAAdapter",
             "--model.init_args.adapter.init_args.r", "4"],
    "none": ["--model.init_args.adapter", "usvl.models.adapters.NoAdapter"],
    "full": ["--model.init_args.adapter", "usvl.models.adapters.FullFineTune"],
}


@pytest.fixture
def injected(monkeypatch) -> list[dict[str, tuple[torch.nn.Parameter, torch.Tensor]]]:
    """Records every adapter injection: each inserted parameter (qualified within the returned modules) with a copy
    of its value at injection."""
    records: list[dict[str, tuple[torch.nn.Parameter, torch.Tensor]]] = []
    for adapter_type in (MonaAdapter, LoRAAdapter, FullFineTune, NoAdapter):
        def apply(self, encoder, _original=adapter_type.apply):
            modules = _original(self, encoder)
            records.append({f"{index}.{name}": (parameter, parameter.detach().clone())
                            for index, module in enumerate(modules) for name, parameter in module.named_parameters()})
            return modules

        monkeypatch.setattr(adapter_type, "apply", apply)
    return records


def moved_by_gradient(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Whether ``after`` differs from ``before`` other than by a uniform scaling (weight decay alone only scales)."""
    if not before.any():
        return bool(after.any())
    scale = (after * before).sum() / before.square().sum()
    return not torch.allclose(after, before * scale, rtol=1e-5, atol=1e-6)


def assert_adapter_trained(kind: str, record: dict[str, tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
    """The weights that make each adapter kind what it is were moved by gradients."""
    def moved(*parts: str) -> dict[int, bool]:
        """Per inserted module (index): whether all its parameters named like ``parts`` moved."""
        layers: dict[int, bool] = {}
        for name, (parameter, before) in record.items():
            if all(part in name for part in parts):
                index = int(name.split(".")[0])
                layers[index] = layers.get(index, True) and moved_by_gradient(before, parameter.detach())
        assert layers, f"{kind}: no parameter named like {parts}"
        return layers

    if kind == "none":
        assert record == {}
        return
    if kind == "full":
        assert sum(moved_by_gradient(before, p.detach()) for p, before in record.values()) > len(record) // 2
        return
    if kind == "lora":
        assert all(moved("lora_B").values())
        return
    variant = kind.split("-")[1]
    assert all(moved(".up.weight").values())
    # The 2-D op of the last layer only sees patch tokens, which a ViT's CLS embedding no longer reads after the last
    # block: classification gives it no gradient, so every layer but the last must have moved.
    if variant in ("freq", "hybrid"):
        assert all(list(moved(".op.filter.weight").values())[:-1])
    if variant in ("noise_aware", "hybrid"):
        assert all(list(moved(".op.noise.").values())[:-1])


@pytest.mark.parametrize("kind", list(ADAPTERS))
@pytest.mark.parametrize("encoder", list(CONFIGS))
def test_adapter_kind_switches_from_the_command_line_and_trains(encoder, kind, tmp_path, injected):
    configs = [argument for path in CONFIGS[encoder] for argument in ("--config", str(path))]
    cli = run_lightning(["fit", *configs, "--trainer.logger.init_args.save_dir", str(tmp_path),
                         "--trainer.max_epochs", "1", *ADAPTERS[kind]])
    metrics = json.loads(next(tmp_path.rglob("test_metrics.json")).read_text())
    assert "test/auroc" in metrics["metrics"]
    counts = cli.model.parameter_counts()
    assert metrics["trainable_params"] == counts["trainable_params"] < counts["total_params"]
    if kind.startswith("mona"):
        assert cli.model.adapter.variant == kind.split("-")[1]
    assert type(cli.model.adapter).__name__ == {"lora": "LoRAAdapter", "none": "NoAdapter",
                                                  "full": "FullFineTune"}.get(kind, "MonaAdapter")
    assert cli.trainer.global_step >= 2
    assert_adapter_trained(kind, injected[0])
