"""TextEmbeddingCache: encode class descriptions with the frozen text tower once, before fit, and cache them."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from usvl.paths import cache_dir
from usvl.text.prompts import load_descriptions

log = logging.getLogger(__name__)


def cache_key(encoder_id: str, texts: list[list[str]]) -> str:
    """A stable hash of the encoder identity and every text, in order."""
    payload = json.dumps({"encoder": encoder_id, "texts": texts}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


class TextEmbeddingCache(Callback):
    """Encode the class descriptions with the frozen text tower and cache the embeddings on disk.

    At ``setup`` (before any training step) the callback reads the descriptions for the data module's classes,
    looks up ``<cache_dir>/<hash>.pt`` keyed by the encoder identity and the texts, encodes on a miss, and hands
    the ``[classes, phrasings, text_dim]`` tensor to the LightningModule through ``set_text_embeddings``.

    Args:
        descriptions: YAML file of class descriptions (see ``configs/text/``).
        cache_dir: Where embeddings are stored; defaults to ``$USVL_CACHE/text`` (``~/.cache/usvl/text``).
    """

    def __init__(self, descriptions: str, cache_dir: str | None = None) -> None:
        self.descriptions = descriptions
        self.cache_dir = cache_dir
        self.last_path: Path | None = None
        self.last_hit: bool | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Load or compute the embeddings and give them to the module; nothing when its head uses no text."""
        if not getattr(pl_module, "uses_text", True):
            log.info("Class descriptions not encoded: the model's head uses no class text")
            return
        class_names = list(getattr(pl_module, "class_names", None) or trainer.datamodule.class_names)
        descriptions = load_descriptions(self.descriptions)
        texts = descriptions.for_classes(class_names)
        encoder = pl_module.encoder
        folder = Path(self.cache_dir) if self.cache_dir else cache_dir() / "text"
        path = folder / f"{cache_key(encoder.encoder_id, texts)}.pt"
        if path.is_file():
            embeddings = torch.load(path, map_location="cpu", weights_only=True)["embeddings"]
            self.last_hit = True
            log.info("Text-embedding cache hit: %s (%d classes)", path, len(texts))
        else:
            embeddings = self.encode(encoder, texts)
            folder.mkdir(parents=True, exist_ok=True)
            record = {
                "embeddings": embeddings,
                "encoder": encoder.encoder_id,
                "class_names": class_names,
                "texts": texts,
                "provenance": descriptions.provenance,
            }
            temporary = path.with_suffix(".tmp")
            torch.save(record, temporary)
            temporary.replace(path)
            self.last_hit = False
            log.info("Text-embedding cache miss: encoded %d descriptions, saved %s",
                     sum(len(t) for t in texts), path)
        self.last_path = path
        pl_module.set_text_embeddings(embeddings)

    @staticmethod
    def encode(encoder, texts: list[list[str]]) -> torch.Tensor:
        """Encode descriptions per class; classes with fewer phrasings are padded by repeating their own."""
        width = max(len(t) for t in texts)
        padded = [(t * width)[:width] for t in texts]
        flat = [sentence for class_texts in padded for sentence in class_texts]
        with torch.no_grad():
            raw = encoder.encode_text_raw(flat).float().cpu()
        return raw.view(len(texts), width, -1)
