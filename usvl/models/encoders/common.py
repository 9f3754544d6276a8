"""Small pieces shared by the encoder backends."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from usvl.models.encoders.weights import MissingWeightsError


def identity_linear(width: int) -> nn.Linear:
    """A trainable ``width -> width`` linear map that starts as the identity."""
    layer = nn.Linear(width, width)
    nn.init.eye_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of token embeddings ``[N, L, D]`` over the tokens that ``attention_mask`` ``[N, L]`` keeps: ``[N, D]``."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


@torch.no_grad()
def mean_pooled_text(model: nn.Module, tokenizer, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """Sentence embeddings ``[N, hidden]`` of a frozen transformers text model: masked mean of its last layer.

    This is the sentence-transformers pooling (all-MiniLM-L6-v2 and the other mean-pooled text towers).

    Args:
        model: A transformers encoder whose output has ``last_hidden_state``.
        tokenizer: Its tokenizer.
        texts: The texts; longer ones are truncated to ``max_length`` tokens.
        max_length: Longest token sequence.
    """
    device = next(model.parameters()).device
    tokens = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                       return_tensors="pt").to(device)
    return masked_mean(model(**tokens).last_hidden_state, tokens["attention_mask"])


@contextmanager
def capture_outputs(modules: list[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Record the output of each module (the first element of a tuple output) while the block runs.

    The one feature-tap mechanism of the encoders: forward hooks on the tapped modules, so the towers run their own
    ``forward`` unchanged and a module wrapped by an adapter is tapped after its adapter.

    Yields:
        A list filled, in the order of ``modules``, once the forward pass inside the block has run.
    """
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int):
        return lambda _module, _inputs, output: captured.__setitem__(
            index, output[0] if isinstance(output, tuple) else output)

    handles = [module.register_forward_hook(hook(index)) for index, module in enumerate(modules)]
    outputs: list[torch.Tensor] = []
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()
    outputs.extend(captured[index] for index in range(len(modules)))


def match_targets(root: nn.Module, target_modules: str | Sequence[str]) -> list[str]:
    """Qualified names of the modules of ``root`` that ``target_modules`` selects.

    Args:
        root: The module whose ``named_modules()`` are matched.
        target_modules: A regular expression matched in full against each name, or a list of names each matching a
            module whose name equals it or ends with ``"." + name`` (peft's rule).
    """
    names = [name for name, _ in root.named_modules() if name]
    if isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        return [name for name in names if pattern.fullmatch(name)]
    targets = list(target_modules)
    return [name for name in names if any(name == t or name.endswith(f".{t}") for t in targets)]


def pointwise_convolutions(module: nn.Module, prefix: str = "") -> list[str]:
    """Qualified names (``prefix`` + name) of the ungrouped 1x1 ``nn.Conv2d`` layers of ``module``.

    They are the channel-mixing layers of a CNN (expansion/projection of inverted residuals, bottleneck 1x1s), the
    natural LoRA targets of a tower without attention.
    """
    return [
        f"{prefix}{name}"
        for name, child in module.named_modules()
        if isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and child.groups == 1
    ]


MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".json", ".txt", ".model")
"""Files of a model folder that can change what it computes: PyTorch weights, configs, tokenizer vocabularies."""


def hf_model_files(name: str, cache_dir: str | None = None) -> list[Path]:
    """The files of a transformers model: those of a local folder, or of its cached hub snapshot (no network).

    The hub snapshot is the one the cache's ``main`` ref points to (the revision ``from_pretrained`` loads), so a
    new revision gives other files. Only PyTorch weights, configs and tokenizer files count
    (:data:`MODEL_FILE_SUFFIXES`; Flax, TensorFlow and ONNX exports are skipped). Empty when nothing is cached.
    """
    local = Path(name).expanduser()
    if local.is_dir():
        folder = local
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(name, "config.json", cache_dir=cache_dir)
        except ValueError:  # not a valid hub id
            return []
        if not isinstance(cached, str):
            return []
        folder = Path(cached).parent
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES)


def cached_hub_file(repo_id: str, filenames: Sequence[str], cache_dir: str | None = None) -> Path | None:
    """The first of ``filenames`` present in the local hub cache of ``repo_id`` (no network), else ``None``."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        try:
            cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        except ValueError:
            return None
        if isinstance(cached, str):
            return Path(cached)
    return None


def load_hf_pretrained(name: str, cache_dir: str | None) -> tuple[nn.Module, object, str]:
    """A transformers model and its tokenizer from a local folder, the cache, or the hub.

    Returns:
        The model, the tokenizer, and the source they were loaded from (the folder path or the hub id).

    Raises:
        MissingWeightsError: Neither a local folder nor cached files exist and the hub is unreachable.
    """
    from transformers import AutoModel, AutoTokenizer

    local = Path(name).expanduser()
    source = str(local) if local.is_dir() else name
    try:
        model = AutoModel.from_pretrained(source, cache_dir=cache_dir, local_files_only=local.is_dir())
        tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cache_dir, local_files_only=local.is_dir())
    except OSError as error:
        raise MissingWeightsError(
            f"Cannot load Hugging Face model '{name}': {error}. It is not a local folder, not in the cache "
            f"({cache_dir or '~/.cache/huggingface'}), and the hub is unreachable. On a connected machine run "
            f"`huggingface-cli download {name}` and copy the cache here, or pass the model's local folder."
        ) from error
    return model, tokenizer, source
