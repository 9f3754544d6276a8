"""Tiny random models saved the way real checkpoints are, so every encoder backend is tested offline."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from usvl.models.encoders.weights import MINILM_L6_V2

TINY_LAYERS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2)
TINY_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def minilm_tokenizer():
    """The packaged MiniLM tokenizer (a real WordPiece vocabulary, offline)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MINILM_L6_V2.resolve(verify=False).parent), local_files_only=True)


def save_tiny_hf_clip(folder: Path, family: str, image_size: int = 32) -> Path:
    """A tiny random transformers CLIP or SigLIP with a real tokenizer, saved like a hub checkpoint."""
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    tokenizer = minilm_tokenizer()
    text = dict(TINY_LAYERS, vocab_size=tokenizer.vocab_size, max_position_embeddings=64,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                eos_token_id=tokenizer.sep_token_id)
    vision = dict(TINY_LAYERS, image_size=image_size, patch_size=8)
    torch.manual_seed(0)
    if family == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def save_tiny_text_model(folder: Path) -> Path:
    """A one-layer random BERT with the real MiniLM tokenizer, saved like a hub checkpoint."""
    from transformers import BertConfig, BertModel

    tokenizer = minilm_tokenizer()
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def write_tiny_open_clip_config(folder: Path, timm_trunk: bool, image_size: int = 64) -> Path:
    """An open_clip model-config JSON: open_clip's own ViT (OpenAI style) or a timm trunk (BiomedCLIP style)."""
    if timm_trunk:
        vision = {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                  "timm_proj": "linear", "image_size": image_size}
        name = "usvl-tiny-timm-clip"
    else:
        vision = {"image_size": image_size, "layers": 4, "width": 64, "head_width": 32, "patch_size": 8}
        name = "usvl-tiny-openai-clip"
    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"embed_dim": 32, "vision_cfg": vision, "text_cfg": TINY_TEXT}))
    return path
