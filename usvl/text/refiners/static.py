"""The static refiner: refinements read from a JSONL file (hand-written, or the output of an earlier run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from usvl.text.refiners.base import Failure, file_sha256


def read_refinements(path: str | Path) -> dict[str, str]:
    """Read ``{"source": ..., "refined": ...}`` lines into a mapping from source text to refined text.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not a JSON object with string ``source`` and ``refined``; the message names the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Static refinements file {path} not found; give a JSONL file of "
                                '{"source": ..., "refined": ...} lines')
    table: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error})") from error
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("source", "refined")):
            raise ValueError(f'{path}:{number}: expected an object with string "source" and "refined"')
        table[record["source"]] = record["refined"]
    return table


class StaticRefiner:
    """Look each source text up in a JSONL file of refinements.

    Args:
        path: JSONL file, one ``{"source": ..., "refined": ...}`` object per line.
    """

    name = "static"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.table = read_refinements(self.path)
        self.settings: dict[str, Any] = {}

    @property
    def model(self) -> dict[str, Any]:
        """The refinements file and its sha256."""
        return {"id": f"static:{self.path}", "sha256": file_sha256(self.path)}

    def generate(self, sources: list[str], instruction: str) -> list[str | Failure]:
        """The stored refinement of each source; a :class:`Failure` where the file has none."""
        return [self.table[source] if source in self.table
                else Failure(f"{self.path} has no refinement for this text") for source in sources]
