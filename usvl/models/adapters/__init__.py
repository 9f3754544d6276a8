"""Adapters that make a frozen encoder trainable at a small cost."""

from usvl.models.adapters.base import AdaptedModule, Adapter, NoAdapter
from usvl.models.adapters.mona import MonaAdapter, MonaLayer

__all__ = ["AdaptedModule", "Adapter", "MonaAdapter", "MonaLayer", "NoAdapter"]
