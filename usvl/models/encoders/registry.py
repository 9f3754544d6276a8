"""One registry of vision-language encoders, keyed by name (``family/variant``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from usvl.models.encoders.base import VisionLanguageEncoder

EncoderFactory = Callable[..., VisionLanguageEncoder]
_ENCODERS: dict[str, EncoderFactory] = {}


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator registering an encoder factory under ``name``.

    Args:
        name: Registry key such as ``embedded/lit-effnet-minilm``.
    """

    def decorator(factory: EncoderFactory) -> EncoderFactory:
        if name in _ENCODERS:
            raise ValueError(f"Encoder '{name}' is already registered")
        _ENCODERS[name] = factory
        return factory

    return decorator


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching a glob pattern, sorted."""
    return sorted(name for name in _ENCODERS if fnmatch.fnmatch(name, pattern))


def build_encoder(name: str, **kwargs: Any) -> VisionLanguageEncoder:
    """Build the encoder registered under ``name``.

    Args:
        name: Registry key.
        **kwargs: Passed to the encoder factory.

    Raises:
        KeyError: Unknown name; the message lists the registered ones.
    """
    if name not in _ENCODERS:
        raise KeyError(f"Unknown encoder '{name}'. Registered encoders: {', '.join(list_encoders())}")
    return _ENCODERS[name](**kwargs)
