"""The paper's model grid (configs/paper/models): every model x adapter x task section parses and instantiates.

The hub or local weights of BiomedCLIP, CLIP, MetaCLIP and UniMed-CLIP are not available offline, so the encoder is
swapped for the random tiny ViT-CLIP; everything else (adapter, head, loss, optimiser, scheduler) is the shipped one.
"""

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule

from usvl.cli import USVLCLI

REPO = Path(__file__).resolve().parents[1]
MODEL_SECTIONS = sorted((REPO / "configs" / "paper" / "models").glob("*.yaml"))
FULL_CONFIG = {"seg": REPO / "configs" / "breast_seg.yaml", "cls": REPO / "configs" / "thyroid_cls.yaml"}
TINY_ENCODER = ["--model.init_args.encoder", "usvl.models.encoders.TinyViTCLIP",
                "--model.init_args.encoder.init_args.feature_taps", "[1, 2, 3]"]


def test_the_grid_is_complete():
    names = {path.stem for path in MODEL_SECTIONS}
    expected = {f"{model}_{adapter}_{task}" for model in ("biomedclip", "clip", "metaclip", "unimedclip")
                for adapter in ("mona", "lora") for task in ("seg", "cls")}
    assert names == expected


@pytest.mark.parametrize("section", MODEL_SECTIONS, ids=lambda p: p.stem)
def test_model_section_instantiates_with_the_tiny_encoder(section):
    model, adapter, task = section.stem.split("_")
    shipped = yaml.safe_load(section.read_text())["init_args"]
    assert shipped["encoder"]["class_path"] == "usvl.models.encoders.OpenCLIPEncoder"
    assert shipped["encoder"]["init_args"]["feature_taps"] == [3, 6, 9]
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  args=["--config", str(FULL_CONFIG[task]), "--model", str(section), *TINY_ENCODER,
                        "--data.init_args.image_size", "64", "--trainer.logger", "false"])
    task_module = cli.model
    assert type(task_module).__name__ == {"seg": "SegmentationTask", "cls": "ClassificationTask"}[task]
    assert type(task_module.adapter).__name__ == {"mona": "MonaAdapter", "lora": "LoRAAdapter"}[adapter]
    if adapter == "mona":
        assert task_module.adapter.variant == "hybrid" and task_module.adapter.bottleneck == 64
    else:
        assert (task_module.adapter.r, task_module.adapter.alpha, task_module.adapter.use_rslora) == (16, 32, True)
    counts = task_module.parameter_counts()
    assert 0 < counts["trainable_params"] < counts["total_params"]
    names = cli.datamodule.class_names
    raw = task_module.encoder.encode_text_raw([f"an ultrasound image of a {name} lesion" for name in names])
    task_module.set_text_embeddings(raw[:, None])
    images = torch.rand(2, 1, 64, 64)
    task_module.eval()
    with torch.no_grad():
        output = task_module(images)
    if task == "seg":
        assert output.shape[-2:] == (64, 64)
    else:
        assert output.shape == (2, cli.datamodule.num_classes)


def test_unimed_clip_architecture_is_a_registered_open_clip_config():
    from usvl.models.encoders.openclip import register_model_config

    name = register_model_config(str(REPO / "configs" / "paper" / "models" / "unimed-clip-vit-b16.json"))
    import open_clip

    config = open_clip.get_model_config(name)
    assert config["vision_cfg"]["patch_size"] == 16 and config["quick_gelu"]
    assert config["text_cfg"]["hf_model_name"] == "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        register_model_config(str(REPO / "missing.json"))
