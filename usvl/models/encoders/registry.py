"""One registry of vision-language encoders, keyed by name (``family/variant``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from usvl.models.encoders.base import VisionLanguageEncoder

EncoderFactory = Callable[..., VisionLanguageEncoder]
_ENCODERS: dict[str, EncoderFactory] = {}
_FAMILIES: dict[str, EncoderFactory] = {}


def _registering(table: dict[str, EncoderFactory], key: str, kind: str) -> Callable[[EncoderFactory], EncoderFactory]:
    def decorator(factory: EncoderFactory) -> EncoderFactory:
        if key in table:
            raise ValueError(f"{kind} '{key}' is already registered")
        table[key] = factory
        return factory

    return decorator


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator registering an encoder factory under ``name``.

    Args:
        name: Registry key such as ``embedded/lit-effnet-minilm``.
    """
    return _registering(_ENCODERS, name, "Encoder")


def register_encoder_family(prefix: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator registering a factory for every name that starts with ``prefix`` (e.g. ``openclip/``).

    The factory is called with the rest of the name as its first argument: ``openclip/ViT-B-16`` calls
    ``factory("ViT-B-16", **kwargs)``.
    """
    return _registering(_FAMILIES, prefix, "Encoder family")


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching a glob pattern, sorted."""
    names = list(_ENCODERS) + [f"{prefix}<model>" for prefix in _FAMILIES]
    return sorted(name for name in names if fnmatch.fnmatch(name, pattern))


def build_encoder(name: str, **kwargs: Any) -> VisionLanguageEncoder:
    """Build the encoder registered under ``name``.

    Args:
        name: Registry key.
        **kwargs: Passed to the encoder factory.

    Raises:
        KeyError: Unknown name; the message lists the registered ones.
    """
    if name in _ENCODERS:
        return _ENCODERS[name](**kwargs)
    for prefix, factory in _FAMILIES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return factory(name[len(prefix):], **kwargs)
    raise KeyError(f"Unknown encoder '{name}'. Registered encoders: {', '.join(list_encoders())}")
