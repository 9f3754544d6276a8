"""The paper's model grid (configs/paper/models): every model x adapter x task section parses and instantiates.

The hub or local weights of BiomedCLIP, CLIP, MetaCLIP and UniMed-CLIP are not available offline, so the encoder is
swapped for the random tiny ViT-CLIP; everything else (adapter, head, loss, optimiser, scheduler) is the shipped one.
"""

import re

import pytest
import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from shipped_configs import CONFIGS, MODEL_SECTIONS, REPO

from usvl.cli import USVLCLI

FULL_CONFIG = {"seg": REPO / "configs" / "breast_seg.yaml", "cls": REPO / "configs" / "thyroid_cls.yaml"}
TINY_ENCODER = ["--model.init_args.encoder", "usvl.models.encoders.TinyViTCLIP",
                "--model.init_args.encoder.init_args.feature_taps", "[1, 2, 3]"]


def test_the_grid_is_complete():
    names = {path.stem for path in MODEL_SECTIONS}
    expected = {f"{model}_{adapter}_{task}" for model in ("biomedclip", "clip", "metaclip", "unimedclip")
                for adapter in ("mona", "lora") for task in ("seg", "cls")}
    assert names == expected | {"embedded_mona_cls", "embedded_mona_seg"}


@pytest.mark.parametrize("section", [p for p in MODEL_SECTIONS if p.stem.endswith("_seg")], ids=lambda p: p.stem)
def test_segmentation_adapters_sit_only_where_a_gradient_reaches(section):
    """Adapters after the last tapped block get no gradient (and fail DDP): a ViT-B section adapts blocks 0-9 only."""
    shipped = yaml.safe_load(section.read_text())["init_args"]
    encoder = yaml.safe_load((section.parent / shipped["encoder"]).read_text())["init_args"]
    adapter = yaml.safe_load((section.parent / shipped["adapter"]).read_text())["init_args"]
    if encoder.get("feature_taps") != [3, 6, 9]:
        return
    if "points" in adapter:
        assert adapter["points"] == list(range(10))
    else:
        blocks = {"trunk": "model.visual.trunk.blocks.{}.attn.qkv",
                  "transformer": "model.visual.transformer.resblocks.{}.attn"}
        template = blocks["trunk" if "trunk" in adapter["target_modules"] else "transformer"]
        adapted = [i for i in range(12) if re.fullmatch(adapter["target_modules"], template.format(i))]
        assert adapted == list(range(10))


@pytest.mark.parametrize("section", MODEL_SECTIONS, ids=lambda p: p.stem)
def test_model_section_instantiates_with_the_tiny_encoder(section):
    model, adapter, task = section.stem.split("_")
    shipped = yaml.safe_load(section.read_text())["init_args"]
    encoder = yaml.safe_load((section.parent / shipped["encoder"]).read_text())
    assert (section.parent / shipped["encoder"]).resolve().parent == CONFIGS / "encoders"
    swap = []
    if model != "embedded":
        assert encoder["class_path"] == "usvl.models.encoders.OpenCLIPEncoder"
        assert encoder["init_args"]["feature_taps"] == [3, 6, 9]
        # the tiny ViT has 4 blocks: Mona on all of them (the shipped ViT-B points are checked above); the LoRA
        # patterns of blocks 0-9 match its blocks (BiomedCLIP's timm-trunk pattern: the open_clip-native one)
        swap = [*TINY_ENCODER, *(["--model.init_args.adapter.init_args.points", "[0, 1, 2, 3]"] if adapter == "mona"
                                 else [])]
        if (model, adapter, task) == ("biomedclip", "lora", "seg"):
            swap += ["--model.init_args.adapter.init_args.target_modules",
                     r"model\.visual\.transformer\.resblocks\.[0-9]\.attn"]
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  args=["--config", str(FULL_CONFIG[task]), "--model", str(section), *swap,
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

    name = register_model_config(str(CONFIGS / "encoders" / "unimed-clip-vit-b16.json"))
    import open_clip

    config = open_clip.get_model_config(name)
    assert config["vision_cfg"]["patch_size"] == 16 and config["quick_gelu"]
    assert config["text_cfg"]["hf_model_name"] == "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        register_model_config(str(REPO / "missing.json"))
