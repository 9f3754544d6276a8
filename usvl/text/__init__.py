"""The text side: class descriptions and the text-embedding cache."""

from usvl.text.cache import TextEmbeddingCache
from usvl.text.prompts import ClassDescriptions, load_descriptions

__all__ = ["ClassDescriptions", "TextEmbeddingCache", "load_descriptions"]
