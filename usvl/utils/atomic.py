"""Atomic file output: a reader sees the old file, the complete new one, or none, never a half-written file.

Every writer here writes to a uniquely named temporary file beside the target (same folder, so same file system),
flushes it to disk and then renames it over the target (:func:`atomic_output`) or hard-links it to a name that must
be new (``exclusive=True``: the link fails when the name exists, so two processes never claim the same file). A
failure at any point removes the temporary file and leaves the target as it was. Two processes writing the same
target at once each rename a complete file: the last rename wins, nothing is mixed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_output(path: str | Path, exclusive: bool = False) -> Iterator[Path]:
    """Give a temporary path to write; when the block ends without an error, put it in place at ``path``.

    Args:
        path: The final file. Its folder is created.
        exclusive: ``False``: rename over ``path`` (replaces an existing file). ``True``: hard-link to ``path``,
            which raises :class:`FileExistsError` when ``path`` exists (also when another process created it
            while this one was writing).

    Yields:
        A path beside ``path`` that does not exist yet; write the whole content to it (any writer that takes a
        file name: ``np.save``, ``torch.save``, ``Image.save`` with an explicit format, ``DataFrame.to_csv``).

    Raises:
        FileExistsError: ``exclusive`` and ``path`` exists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        _fsync(temporary)
        if exclusive:
            os.link(temporary, path)
        else:
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes, exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_output`; returns ``path``."""
    with atomic_output(path, exclusive) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, exclusive: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` through :func:`atomic_output`; returns ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"), exclusive)


def write_csv_atomic(path: str | Path, table: pd.DataFrame, exclusive: bool = False) -> Path:
    """Write ``table`` as CSV (no index) to ``path`` through :func:`atomic_output`; returns ``path``."""
    with atomic_output(path, exclusive) as temporary:
        table.to_csv(temporary, index=False)
    return Path(path)


def json_text(payload: Any) -> str:
    """``payload`` as indented JSON with sorted keys; tensors and numpy scalars become plain numbers."""
    return json.dumps(to_builtin(payload), indent=2, sort_keys=True) + "\n"


def to_builtin(value: Any) -> Any:
    """Tensors and numpy scalars to plain Python numbers (for JSON), through mappings, lists and tuples."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_builtin(v) for v in value]
    return value


def write_json_atomic(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as JSON to ``path`` (replacing it) through :func:`atomic_output`; returns ``path``."""
    return write_text_atomic(path, json_text(payload))


def unique_name(path: str | Path, index: int) -> Path:
    """``path`` for ``index`` 0, else ``<stem>-<index><suffix>`` beside it."""
    path = Path(path)
    return path if index == 0 else path.with_name(f"{path.stem}-{index}{path.suffix}")


def write_new(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a new file at ``path``, or at ``<stem>-1<suffix>``, ``-2``, ... when taken: nothing is overwritten.

    The name is claimed atomically (a hard link that fails when the name exists), so two processes writing
    ``test_metrics.json`` into one folder at once get two files, never one mixed or lost.

    Args:
        path: The preferred file name.
        write: Writes the content to the temporary path it is given.

    Returns:
        The file written.
    """
    index = 0
    while True:
        candidate = unique_name(path, index)
        if not candidate.exists():
            try:
                with atomic_output(candidate, exclusive=True) as temporary:
                    write(temporary)
                return candidate
            except FileExistsError:
                pass
        index += 1


def write_json_unique(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write JSON to a new file at ``path`` (or ``<stem>-1.json``, ... when taken); see :func:`write_new`."""
    data = json_text(payload).encode("utf-8")
    return write_new(path, lambda temporary: temporary.write_bytes(data))


__all__ = ["atomic_output", "json_text", "to_builtin", "unique_name", "write_bytes_atomic", "write_csv_atomic",
           "write_json_atomic", "write_json_unique", "write_new", "write_text_atomic"]
