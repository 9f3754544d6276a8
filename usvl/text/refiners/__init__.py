"""Refiner back-ends: a static file, a local or hub causal LM (transformers), an OpenAI-compatible server."""

from usvl.text.refiners.base import Failure, Refiner, file_sha256
from usvl.text.refiners.openai_refiner import OpenAIRefiner
from usvl.text.refiners.static import StaticRefiner
from usvl.text.refiners.transformers_refiner import TransformersRefiner

__all__ = ["Failure", "OpenAIRefiner", "Refiner", "StaticRefiner", "TransformersRefiner", "file_sha256"]
