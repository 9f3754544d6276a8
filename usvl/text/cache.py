"""TextEmbeddingCache: encode the class descriptions with the frozen text tower once, cache them, hand them over.

The cache key is the encoder identity, the fingerprint of the weight files its towers were loaded from, and every
text; a replaced local checkpoint or a new hub revision therefore misses. Files are written atomically and checked
when read; a corrupt or foreign file is rebuilt with a warning. After encoding, the text tower is released when
nothing trains it. Text ablations (descriptions shuffled across classes, random vectors of the same norm) are applied
to what was read, so the cache always holds the true encoding.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from usvl.paths import cache_dir
from usvl.text.prompts import load_descriptions, load_refinements
from usvl.text.refine_cache import cached_refinement, load_refiner_spec
from usvl.utils.atomic import atomic_output

log = logging.getLogger(__name__)

ABLATIONS = ("none", "shuffle", "random")
"""Text ablations: ``none`` (the descriptions), ``shuffle`` (descriptions permuted across classes, no class keeps
its own), ``random`` (Gaussian vectors with each embedding's own norm). "No text" is a head without text instead."""

CACHE_FORMAT = 2
"""Version of the cache file layout; files of another version are rebuilt."""


def cache_key(encoder_id: str, texts: list[list[str]], weights_fingerprint: str = "none") -> str:
    """A stable hash of the encoder identity, the fingerprint of its weight files and every text, in order."""
    payload = json.dumps({"encoder": encoder_id, "weights": weights_fingerprint, "texts": texts},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def derangement(count: int, seed: int) -> list[int]:
    """A seeded random permutation of ``range(count)`` with no fixed point (identity for fewer than two items)."""
    if count < 2:
        return list(range(count))
    generator = torch.Generator().manual_seed(seed)
    while True:
        permutation = torch.randperm(count, generator=generator).tolist()
        if all(index != target for index, target in enumerate(permutation)):
            return permutation


def ablate(embeddings: torch.Tensor, ablation: str, seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Apply a text ablation to class embeddings ``[K, P, D]``.

    Args:
        embeddings: Frozen text-tower embeddings of each class's phrasings.
        ablation: ``none``; ``shuffle``: class ``k`` gets the phrasings of class ``permutation[k]`` (a seeded
            derangement: no class keeps its own with two or more classes); ``random``: every vector is replaced by
            a seeded Gaussian vector of the same norm.
        seed: Seed of the permutation or of the random vectors.

    Returns:
        The ablated embeddings and a record of what was done (``ablation``, ``seed``, ``permutation``).

    Raises:
        ValueError: Unknown ablation.
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"Unknown text ablation {ablation!r}; choose one of {list(ABLATIONS)}")
    record: dict[str, Any] = {"ablation": ablation}
    if ablation == "shuffle":
        permutation = derangement(embeddings.shape[0], seed)
        record.update(seed=seed, permutation=permutation)
        return embeddings[permutation].clone(), record
    if ablation == "random":
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(embeddings.shape, generator=generator, dtype=torch.float64)
        norms = embeddings.double().norm(dim=-1, keepdim=True)
        record.update(seed=seed)
        return (noise / noise.norm(dim=-1, keepdim=True) * norms).to(embeddings.dtype), record
    return embeddings, record


def resident_memory_mb() -> float:
    """Resident set size of this process in MB (``/proc/self/statm``; 0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _trim_heap() -> None:
    """Give freed heap memory back to the system (glibc keeps it otherwise, so RSS would not drop)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def read_cache(path: Path, key: str, texts: list[list[str]]) -> torch.Tensor | None:
    """The embeddings stored in ``path`` if it is a valid cache file for ``key`` and ``texts``, else ``None``.

    A file that cannot be read, has another layout or key, or holds embeddings of the wrong shape or with
    non-finite values is reported with a warning (and then rebuilt by the caller).
    """
    if not path.is_file():
        return None
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (any unreadable file is rebuilt: truncated, not a zip, pickle error)
        problem = f"unreadable ({type(error).__name__}: {str(error)[:200]})"
    else:
        problem = _invalid(record, key, texts)
        if problem is None:
            return record["embeddings"].float()
    log.warning("Text-embedding cache %s is %s; encoding the descriptions again and replacing it", path, problem)
    return None


def _invalid(record: Any, key: str, texts: list[list[str]]) -> str | None:
    """Why a loaded cache record does not fit, or ``None`` when it does."""
    if not isinstance(record, dict) or not isinstance(record.get("embeddings"), torch.Tensor):
        return "not a text-embedding cache record"
    if record.get("format") != CACHE_FORMAT or record.get("key") != key:
        return f"of another format or key (format {record.get('format')}, key {record.get('key')})"
    embeddings = record["embeddings"]
    expected = (len(texts), max(len(t) for t in texts))
    if embeddings.ndim != 3 or tuple(embeddings.shape[:2]) != expected:
        return f"of shape {tuple(embeddings.shape)}, expected {expected} + (dim,)"
    if record.get("texts") != texts:
        return "for other texts"
    if not torch.isfinite(embeddings).all():
        return "holding non-finite values"
    return None


def write_cache(path: Path, record: dict[str, Any]) -> None:
    """Save ``record`` to ``path`` atomically: a temporary file beside it, flushed to disk, then renamed over it."""
    with atomic_output(path) as temporary:
        torch.save(record, temporary)


class TextEmbeddingCache(Callback):
    """Encode the class descriptions with the frozen text tower, cache them on disk, give them to the module.

    At ``setup`` of every stage (fit, validate, test, predict; before any step and before the gradient check) the
    callback reads the descriptions of the data module's classes (optionally with LLM refinements), looks up
    ``<cache_dir>/<key>.pt`` (key: :func:`cache_key` of the encoder id, its ``weights_fingerprint`` and the
    texts), encodes on a miss, applies the ablation, and hands the ``[classes, phrasings, text_dim]`` tensor to
    the LightningModule through ``set_text_embeddings``. What was used (descriptions, key, ablation, permutation)
    is set as ``pl_module.text_record`` and saved in the checkpoint's callback state.

    Args:
        descriptions: YAML file of class descriptions (see ``configs/text/``).
        cache_dir: Where embeddings are stored; defaults to ``$USVL_CACHE/text`` (``~/.cache/usvl/text``).
        ablation: ``none``; ``shuffle`` (descriptions permuted across classes, a seeded derangement); ``random``
            (seeded Gaussian vectors with each embedding's own norm). For "no text", use a head without text.
        ablation_seed: Seed of the permutation or of the random vectors.
        refined: JSONL written by ``usvl text refine`` from these descriptions; its refined sentences replace
            the descriptions' sentences (template prompts stay).
        free_text_tower: After encoding, release the text tower (when the backend can reload it and the module
            does not set ``needs_text_tower``).
        refiner: Refine the descriptions with an LLM before the first use, once: ``{name: transformers, model:
            <id or folder>, gguf_file: ..., prompt_file: ...}`` (or ``static``/``openai`` with their options, see
            ``usvl text refine --help``), or a YAML file of it (``configs/text/refiners/``). The result is
            cached (:mod:`usvl.text.refine_cache`) and later runs only read it; excludes ``refined``.
    """

    def __init__(
        self,
        descriptions: str,
        cache_dir: str | None = None,
        ablation: Literal["none", "shuffle", "random"] = "none",
        ablation_seed: int = 0,
        refined: str | None = None,
        free_text_tower: bool = True,
        refiner: str | dict[str, Any] | None = None,
    ) -> None:
        if ablation not in ABLATIONS:
            raise ValueError(f"text ablation must be one of {list(ABLATIONS)}, got {ablation!r}")
        if refined and refiner:
            raise ValueError("Give text.refined (a JSONL made by `usvl text refine`) or text.refiner (refine when "
                             "the run starts), not both")
        self.descriptions = descriptions
        self.cache_dir = cache_dir
        self.ablation = ablation
        self.ablation_seed = ablation_seed
        self.refined = refined
        self.free_text_tower = free_text_tower
        self.refiner = load_refiner_spec(refiner) if refiner else None
        self.last_path: Path | None = None
        self.last_hit: bool | None = None
        self.last_memory_mb: tuple[float, float] | None = None
        self.record: dict[str, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Load or compute the embeddings, ablate them if asked, give them to the module; nothing without text.

        With several processes (DDP), rank 0 encodes and writes the cache on a miss and the other ranks read it
        after a barrier; a rank that cannot read it (a cache folder that is not shared) encodes for itself.
        """
        if not getattr(pl_module, "uses_text", True):
            log.info("Class descriptions not encoded: the model's head uses no class text")
            if self.ablation != "none":
                log.warning("text.ablation=%s has no effect: the model's head uses no class text", self.ablation)
            self._remember(pl_module, {"text": "none: the head uses no class text", "ablation": "no_text"})
            return
        class_names = list(getattr(pl_module, "class_names", None) or trainer.datamodule.class_names)
        descriptions = load_descriptions(self.descriptions)
        refined = self.refined
        if self.refiner:
            folder = Path(self.cache_dir).parent / "refined" if self.cache_dir else cache_dir() / "refined"
            refined = str(cached_refinement(descriptions.source, self.refiner, folder))
        if refined:
            refinements, provenance = load_refinements(refined)
            descriptions, replaced = descriptions.with_refinements(refinements, provenance)
            report = log.info if replaced else log.warning
            report("Refined descriptions from %s (%s): %d sentences replaced", refined,
                   provenance.get("model"), replaced)
        texts = descriptions.for_classes(class_names)
        encoder = pl_module.encoder
        fingerprint = str(getattr(encoder, "weights_fingerprint", "none"))
        key = cache_key(encoder.encoder_id, texts, fingerprint)
        folder = Path(self.cache_dir) if self.cache_dir else cache_dir() / "text"
        path = folder / f"{key}.pt"
        embeddings = read_cache(path, key, texts)
        self.last_hit = embeddings is not None
        if embeddings is not None:
            log.info("Text-embedding cache hit: %s (%d classes)", path, len(texts))
        distributed = trainer is not None and trainer.world_size > 1
        if embeddings is None and (not distributed or trainer.is_global_zero):
            embeddings = self.encode(encoder, texts)
            write_cache(path, {
                "format": CACHE_FORMAT, "key": key, "embeddings": embeddings, "encoder": encoder.encoder_id,
                "weights_fingerprint": fingerprint, "class_names": class_names, "texts": texts,
                "descriptions": descriptions.source, "provenance": descriptions.provenance,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            })
            log.info("Text-embedding cache miss: encoded %d descriptions, saved %s",
                     sum(len(t) for t in texts), path)
            self._release_text_tower(encoder, pl_module)
        if distributed:  # every rank, hit or miss: rank 0 has written the file when the barrier opens
            trainer.strategy.barrier("usvl-text-cache")
        if embeddings is None:
            embeddings = self._read_after_rank_zero(trainer, path, key, texts, encoder)
        self.last_path = path
        embeddings, ablation = ablate(embeddings, self.ablation, self.ablation_seed)
        if self.ablation != "none":
            self._warn_ablation(ablation, class_names)
        pl_module.set_text_embeddings(embeddings)
        self._remember(pl_module, {"descriptions": descriptions.source, "refined": refined,
                                   "cache_key": key, "weights_fingerprint": fingerprint, **ablation})

    def _read_after_rank_zero(self, trainer: pl.Trainer, path: Path, key: str, texts: list[list[str]],
                              encoder: Any) -> torch.Tensor:
        """Another rank's embeddings: the file rank 0 wrote, else (a cache folder not shared) its own encoding."""
        embeddings = read_cache(path, key, texts)
        if embeddings is not None:
            log.info("Text-embedding cache read on rank %d (written by rank 0): %s", trainer.global_rank, path)
            return embeddings
        log.warning("Rank %d cannot read the text-embedding cache %s that rank 0 wrote (is the cache folder on a "
                    "filesystem every node shares? set USVL_CACHE or text.cache_dir); encoding on this rank",
                    trainer.global_rank, path)
        return self.encode(encoder, texts)

    def _remember(self, pl_module: pl.LightningModule, record: dict[str, Any]) -> None:
        self.record = record
        pl_module.text_record = dict(record)

    def _warn_ablation(self, record: dict[str, Any], class_names: list[str]) -> None:
        if record["ablation"] == "shuffle":
            if len(class_names) < 2:
                log.warning("TEXT ABLATION 'shuffle' has no effect with one class (%s): the text is unchanged",
                            class_names)
                return
            moved = ", ".join(f"{name} <- {class_names[source]}"
                              for name, source in zip(class_names, record["permutation"], strict=True))
            log.warning("TEXT ABLATION 'shuffle' (seed %d): class descriptions permuted across classes: %s",
                        record["seed"], moved)
        else:
            log.warning("TEXT ABLATION 'random' (seed %d): class text embeddings replaced by random vectors of "
                        "the same norm", record["seed"])

    def _release_text_tower(self, encoder: Any, pl_module: pl.LightningModule) -> None:
        if not self.free_text_tower or getattr(pl_module, "needs_text_tower", False):
            return
        release = getattr(encoder, "release_text_tower", None)
        before = resident_memory_mb()
        if release is None or not release():
            return
        _trim_heap()
        after = resident_memory_mb()
        self.last_memory_mb = (before, after)
        log.info("Released the frozen text tower after encoding: resident memory %.0f -> %.0f MB", before, after)

    def state_dict(self) -> dict[str, Any]:
        """The text used by the run (descriptions, cache key, ablation, permutation), saved in checkpoints."""
        return dict(self.record)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Warn when a resumed or reloaded run's text ablation differs from the checkpoint's."""
        saved = state_dict.get("ablation")
        if saved not in (None, "no_text") and saved != self.ablation:
            log.warning("The checkpoint was trained with text.ablation=%s; this run uses text.ablation=%s",
                        saved, self.ablation)

    @staticmethod
    def encode(encoder, texts: list[list[str]]) -> torch.Tensor:
        """Encode descriptions per class; classes with fewer phrasings are padded by repeating their own."""
        width = max(len(t) for t in texts)
        padded = [(t * width)[:width] for t in texts]
        flat = [sentence for class_texts in padded for sentence in class_texts]
        with torch.no_grad():
            raw = encoder.encode_text_raw(flat).float().cpu()
        return raw.view(len(texts), width, -1)
