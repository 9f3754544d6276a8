"""Every adapter kind can be switched in from the command line, with no other edit, and trains end to end: on the
tiny ViT-CLIP and on the embedded EfficientNet-Lite0 (a CNN: LoRA then adapts its 1x1 convolutions)."""

import json
from pathlib import Path

import pytest

from usvl.cli import run_lightning

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"tiny-vit": str(REPO / "configs" / "smoke" / "tiny_vit_cls.yaml"),
           "embedded": str(REPO / "configs" / "smoke" / "thyroid_cls.yaml")}

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


@pytest.mark.parametrize("kind", list(ADAPTERS))
@pytest.mark.parametrize("encoder", list(CONFIGS))
def test_adapter_kind_switches_from_the_command_line(encoder, kind, tmp_path):
    cli = run_lightning(["fit", "--config", CONFIGS[encoder], "--trainer.logger.init_args.save_dir", str(tmp_path),
                         "--trainer.max_epochs", "1", *ADAPTERS[kind]])
    metrics = json.loads(next(tmp_path.rglob("test_metrics.json")).read_text())
    assert "test/auroc" in metrics["metrics"]
    counts = cli.model.parameter_counts()
    assert metrics["trainable_params"] == counts["trainable_params"] < counts["total_params"]
    if kind.startswith("mona"):
        assert cli.model.adapter.variant == kind.split("-")[1]
    assert type(cli.model.adapter).__name__ == {"lora": "LoRAAdapter", "none": "NoAdapter",
                                                  "full": "FullFineTune"}.get(kind, "MonaAdapter")
