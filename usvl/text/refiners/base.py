"""What every refiner provides: ``generate`` over a list of prompts, and the model's provenance."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Failure:
    """A text the refiner could not refine (for example a request that failed after every retry).

    Attributes:
        message: What went wrong.
    """

    message: str


class Refiner(Protocol):
    """A text refiner.

    ``name`` is the back-end (``static``, ``transformers``, ``openai``); ``model`` describes the model for the
    provenance (at least ``id``; ``sha256`` of the weights file for local models, ``served`` for HTTP servers);
    ``settings`` are the generation settings.
    """

    name: str
    settings: dict[str, Any]

    @property
    def model(self) -> dict[str, Any]:
        """The model's identity for the provenance."""
        ...

    def generate(self, sources: list[str], instruction: str) -> list[str | Failure]:
        """Refine each source text following ``instruction``; one result per source, in order."""
        ...


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
