"""Source readers by name, for ``usvl data check --source NAME --root DIR --option key=value``."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from usvl.data.sources.busi import read_busi_manifest
from usvl.data.sources.ddti import read_ddti_manifest
from usvl.data.sources.folder import read_folder_manifest
from usvl.data.sources.nextgen import nextgen_datasets, read_nextgen_manifest
from usvl.data.sources.prostate import read_prostate_manifest
from usvl.data.sources.tn3k import read_tn3k_manifest
from usvl.utils.errors import UserError

SOURCES: dict[str, Callable[..., pd.DataFrame]] = {
    "busi": read_busi_manifest,
    "tn3k": read_tn3k_manifest,
    "ddti": read_ddti_manifest,
    "prostate": read_prostate_manifest,
    "nextgen": read_nextgen_manifest,
    "folder": read_folder_manifest,
}
"""Reader of each source: ``read(root, **options) -> manifest`` (see :mod:`usvl.data.manifest`)."""

OPTION_CHOICES: dict[str, dict[str, Callable[[Path], list[str]]]] = {
    "nextgen": {"dataset": nextgen_datasets},
}
"""Per source and required option: what lists the values found under a root, for the missing-option error."""


class MissingOptionError(UserError, TypeError):
    """A source's reader needs an option that was not given; the message names it (and the values found)."""


def source_options(name: str) -> dict[str, inspect.Parameter]:
    """The options a source's reader accepts (its parameters after ``root``).

    Raises:
        KeyError: Unknown source; the message lists the known ones.
    """
    reader = _reader(name)
    parameters = list(inspect.signature(reader).parameters.values())[1:]
    return {p.name: p for p in parameters}


def read_source(name: str, root: str | Path, **options: Any) -> pd.DataFrame:
    """Read a source's manifest by name.

    String option values (as given on a command line) are converted to the type the reader expects: ``true`` /
    ``false`` to bool, numbers to int, ``none`` to None, ``[a, b]`` or ``a,b`` to a list (YAML syntax).

    Args:
        name: Source name, one of :data:`SOURCES`.
        root: Dataset folder (or file, for a CSV manifest).
        **options: Reader options, e.g. ``include_normal=False`` (busi), ``fold=1`` (tn3k), ``dataset="BUSI"``
            (nextgen).

    Raises:
        KeyError: Unknown source; the message lists the known ones.
        TypeError: Unknown option; the message lists the accepted ones.
        MissingOptionError: A required option is missing; the message names it and, where the source can list
            them, the values found under ``root``.
    """
    reader = _reader(name)
    accepted = source_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"Source '{name}' has no option(s) {unknown}; it accepts {sorted(accepted)}")
    missing = [key for key, p in accepted.items() if p.default is inspect.Parameter.empty and key not in options]
    if missing:
        raise MissingOptionError(_missing_message(name, root, missing))
    hints = typing.get_type_hints(reader)
    converted = {key: _convert(value, hints.get(key)) for key, value in options.items()}
    return reader(root, **converted)


def _missing_message(name: str, root: str | Path, missing: list[str]) -> str:
    lines = [f"Source '{name}' needs the option(s) {', '.join(missing)}: pass "
             + " ".join(f"--option {key}=<{key}>" for key in missing) + "."]
    for key in missing:
        lister = OPTION_CHOICES.get(name, {}).get(key)
        if lister is not None:
            found = lister(Path(root))
            lines.append(f"Values of {key} found in {root}: {', '.join(found)}." if found
                         else f"No value of {key} found in {root}.")
    return " ".join(lines)


def _reader(name: str) -> Callable[..., pd.DataFrame]:
    try:
        return SOURCES[name]
    except KeyError:
        raise KeyError(f"Unknown data source '{name}'; known sources: {sorted(SOURCES)}") from None


def _accepts_str(annotation: Any) -> bool:
    if annotation is None or annotation is str or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_str(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    return False


def _convert(value: Any, annotation: Any) -> Any:
    if annotation is str and value is not None and not isinstance(value, str):
        return str(value)  # e.g. dataset=2021 parsed as a number by a command line
    if not isinstance(value, str) or _accepts_str(annotation):
        return value
    parsed = yaml.safe_load(value) if value.strip() else None
    if isinstance(parsed, str) and parsed.lower() in ("none", "null"):
        return None
    origin = typing.get_origin(annotation)
    sequence = origin in (list, tuple) or str(origin).endswith("Sequence'>") or "Sequence" in str(annotation)
    if sequence and isinstance(parsed, str):
        return [part.strip() for part in parsed.split(",") if part.strip()]
    return parsed
