"""The shipped configs and how the tests compose them (experiment + trainer/smoke.yaml + data/tiny.yaml)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
EXPERIMENTS = sorted(CONFIGS.glob("*.yaml"))
DATASETS = sorted((CONFIGS / "datasets").glob("*.yaml"))
MODEL_SECTIONS = sorted((CONFIGS / "paper" / "models").glob("*.yaml"))
BASELINES = sorted((CONFIGS / "baselines").glob("*.yaml"))
"""Model sections of the fully trained baselines (``usvl fit --config <experiment> --model <baseline>``)."""
ENCODERS = sorted((CONFIGS / "encoders").glob("*.yaml"))
ADAPTERS = sorted((CONFIGS / "adapters").glob("*.yaml"))


def smoke(experiment: str) -> list[str]:
    """Command-line arguments of the smoke run of ``configs/<experiment>.yaml``: a few steps on tiny 64 px data."""
    return ["--config", str(CONFIGS / f"{experiment}.yaml"), "--config", str(CONFIGS / "trainer" / "smoke.yaml"),
            "--config", str(CONFIGS / "data" / "tiny.yaml")]


ZEROSHOT = sorted((CONFIGS / "zeroshot").glob("*.yaml"))
"""Zero-shot configs (``usvl test --config configs/zeroshot/<organ>.yaml``), instantiated in test_zeroshot.py. The
stage-1 configs (``pretrain_*.yaml``) and stage-2 configs (``*_from_pretrain.yaml``) are experiments (top level)."""
