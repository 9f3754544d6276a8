"""Adapter specifications: small config objects that insert trainable modules into a frozen encoder."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from torch import nn

from usvl.models.encoders.base import VisionLanguageEncoder


class AdaptedModule(nn.Module):
    """Runs a frozen module, then its adapter on the output: ``adapter(base(x))``."""

    def __init__(self, base: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        """Apply the wrapped module, then the adapter (to the first element when the module returns a tuple)."""
        output = self.base(*args, **kwargs)
        if isinstance(output, tuple):
            return (self.adapter(output[0]), *output[1:])
        return self.adapter(output)


class Adapter(ABC):
    """How to adapt a frozen encoder; subclasses are chosen in configs with ``class_path``."""

    name: str = "abstract"

    @abstractmethod
    def apply(self, encoder: VisionLanguageEncoder) -> list[nn.Module]:
        """Insert trainable modules into ``encoder`` in place and return them."""


class NoAdapter(Adapter):
    """No adapter: the frozen towers with trainable projections and head only (a linear probe)."""

    name = "none"

    def apply(self, encoder: VisionLanguageEncoder) -> list[nn.Module]:
        """Leave the encoder as it is."""
        return []


def select_points(encoder: VisionLanguageEncoder, points: Sequence[int] | None) -> list[tuple[str, int]]:
    """Pick adapter points by index (negative indices count from the end); ``None`` means all.

    Raises:
        IndexError: An index is outside the encoder's adapter points.
    """
    available = encoder.adapter_points
    if points is None:
        return list(available)
    chosen = []
    for index in points:
        if not -len(available) <= index < len(available):
            raise IndexError(f"Adapter point {index} out of range: {encoder.encoder_id} has {len(available)}")
        chosen.append(available[index])
    return chosen


def wrap_module(root: nn.Module, qualified_name: str, adapter: nn.Module) -> AdaptedModule:
    """Replace ``root.<qualified_name>`` by ``AdaptedModule(original, adapter)`` and return the wrapper."""
    parent_name, _, child_name = qualified_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    wrapped = AdaptedModule(getattr(parent, child_name), adapter)
    setattr(parent, child_name, wrapped)
    return wrapped
