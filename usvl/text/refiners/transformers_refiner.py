"""The transformers refiner: any causal LM by hub id or local folder (GGUF files included), batched generation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from usvl.text.refiners.base import Failure, file_sha256

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
"""File endings of weight files hashed for the provenance."""


def weights_sha256(folder: Path, gguf_file: str | None = None) -> dict[str, str]:
    """The sha256 of each weights file of a model folder (only ``gguf_file`` when given), by file name."""
    if gguf_file:
        return {gguf_file: file_sha256(folder / gguf_file)}
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return {p.name: file_sha256(p) for p in files}


def _model_folder(model: str, revision: str | None) -> Path | None:
    if Path(model).expanduser().is_dir():
        return Path(model).expanduser()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - any hub lookup failure only means "no local copy to hash"
        log.warning("Cannot locate the files of %s to hash them (%s); recording the revision only", model, error)
        return None


class TransformersRefiner:
    """Refine with a causal language model through ``transformers``.

    The prompt uses the tokenizer's chat template when it has one (system message: the instruction; user message:
    the source text), else the instruction, a blank line, ``Text: <source>`` and ``Rewritten:`` on lines of their
    own. Batches are left-padded.

    Args:
        model: Hub id or local folder.
        gguf_file: A GGUF file inside ``model`` (loaded and dequantised by transformers; needs the ``gguf`` package).
        max_new_tokens: Generation length limit.
        do_sample: Sample (seeded by ``seed``) instead of greedy decoding.
        temperature: Sampling temperature (used when sampling).
        top_p: Nucleus sampling mass (used when sampling).
        seed: Seed of the sampler.
        batch_size: Texts generated together.
        device: Torch device (``cpu``, ``cuda``, ...).
        revision: Hub revision.

    Raises:
        ImportError: ``gguf_file`` is given but the ``gguf`` package is not installed.
    """

    name = "transformers"

    def __init__(self, model: str, gguf_file: str | None = None, max_new_tokens: int = 128, do_sample: bool = False,
                 temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, batch_size: int = 8,
                 device: str = "cpu", revision: str | None = None) -> None:
        import importlib.util

        from transformers import AutoModelForCausalLM, AutoTokenizer

        if gguf_file and importlib.util.find_spec("gguf") is None:
            raise ImportError(f"Loading {gguf_file} needs the gguf package: pip install 'usvl[llm]'")
        self.model_id, self.gguf_file, self.revision = model, gguf_file, revision
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(model, revision=revision, **extra)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(model, revision=revision, **extra).to(device).eval()
        self.device, self.batch_size = device, batch_size
        self.settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed,
                                         "batch_size": batch_size}
        if do_sample:
            self.settings.update(temperature=temperature, top_p=top_p)
        self._model: dict[str, Any] | None = None

    @property
    def model(self) -> dict[str, Any]:
        """Id, GGUF file, revision and the sha256 of every weights file (computed once)."""
        if self._model is None:
            folder = _model_folder(self.model_id, self.revision)
            self._model = {"id": self.model_id, "gguf_file": self.gguf_file,
                           "revision": getattr(self.lm.config, "_commit_hash", None) or self.revision,
                           "sha256": weights_sha256(folder, self.gguf_file) if folder else None}
        return self._model

    def prompt(self, source: str, instruction: str) -> str:
        """The full prompt for one source text."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": instruction}, {"role": "user", "content": source}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{instruction}\n\nText: {source}\nRewritten:"

    def generate(self, sources: list[str], instruction: str) -> list[str | Failure]:
        """Generate one refinement per source, ``batch_size`` at a time; the sampler is seeded once per call."""
        import torch

        torch.manual_seed(self.settings["seed"])
        kwargs = {k: self.settings[k] for k in ("max_new_tokens", "do_sample", "temperature", "top_p")
                  if k in self.settings}
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        results: list[str | Failure] = []
        for start in range(0, len(sources), self.batch_size):
            prompts = [self.prompt(s, instruction) for s in sources[start:start + self.batch_size]]
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not templated)
            batch = batch.to(self.device)
            with torch.inference_mode():
                output = self.lm.generate(**batch, pad_token_id=self.tokenizer.pad_token_id, **kwargs)
            new_tokens = output[:, batch["input_ids"].shape[1]:]
            results.extend(text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return results
