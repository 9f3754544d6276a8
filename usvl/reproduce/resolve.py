"""A cell's resolved config (what ``usvl fit --print_config`` prints) and its hash, the identity of a run.

Two cells with the same resolved config are the same run (e.g. the 100 % point of a few-shot curve and the main
block's cell on the same profile): the grid runs it once. Editing a config a cell uses changes its hash, so the
old run is no longer counted and the cell runs again (the old run directory stays on disk).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import io
import re
from collections.abc import Sequence
from typing import Any

import yaml

HASH_LENGTH = 10
"""Hex digits of the config hash kept in run directory names."""

_VERSION_LINE = re.compile(r"^# lightning\.pytorch==.*\n", re.MULTILINE)


def resolve_config(arguments: Sequence[str]) -> str:
    """The YAML config ``usvl fit <arguments>`` would run with (all files and keys merged, defaults filled in).

    Runs the CLI's parser in this process (about half a second per call), without instantiating anything.

    Raises:
        ValueError: The arguments do not parse; the message has the parser's error.
    """
    from usvl.lightning_cli import run_lightning

    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        try:
            run_lightning(["fit", *arguments, "--print_config"])
        except SystemExit as stop:
            if stop.code not in (0, None):
                raise ValueError(f"usvl fit {' '.join(arguments)} does not parse:\n{errors.getvalue()[-2000:]}") \
                    from None
    return _VERSION_LINE.sub("", printed.getvalue())


def config_hash(resolved: str) -> str:
    """A stable hash of a resolved config (key order and YAML formatting do not matter)."""
    canonical = yaml.safe_dump(yaml.safe_load(resolved), sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def bare_defaults() -> dict:
    """The resolved config of ``usvl fit`` with no arguments: every top-level option at its default."""
    return yaml.safe_load(resolve_config([])) or {}


def _lookup(tree: Any, parts: Sequence[str]) -> tuple[bool, Any]:
    for part in parts:
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return False, None
    return True, tree


def _plain(value: Any) -> Any:
    """``value`` as YAML would store it (tuples become lists); raises for objects YAML cannot represent."""
    return yaml.safe_load(yaml.safe_dump(value))


def _signature_default(class_path: str, name: str) -> tuple[bool, Any]:
    """The default of ``name`` in ``class_path``'s constructor, following ``**kwargs`` into the base classes."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        return False, None
    for klass in inspect.getmro(cls) if inspect.isclass(cls) else ():
        try:
            parameters = inspect.signature(klass.__init__).parameters
        except (TypeError, ValueError):
            return False, None
        parameter = parameters.get(name)
        if parameter is not None:
            if parameter.default is inspect.Parameter.empty:
                return False, None
            try:
                return True, _plain(parameter.default)
            except yaml.YAMLError:
                return False, None
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            break
    return False, None


def option_default(key: str, resolved: dict, bare: dict) -> tuple[bool, Any]:
    """The default of the option at dotted ``key`` of a resolved config: ``(known, value)``.

    An ``init_args`` entry of a ``class_path`` object defaults to the class signature's default (through
    ``**kwargs`` to the base classes, as jsonargparse resolves them); any other option to its value in
    :func:`bare_defaults`. Anything else (a key below a new object, a required argument, a default YAML cannot
    hold) is unknown: ``(False, None)``.
    """
    parts = key.split(".")
    if len(parts) >= 2 and parts[-2] == "init_args":
        found, owner = _lookup(resolved, parts[:-2])
        if found and isinstance(owner, dict) and isinstance(owner.get("class_path"), str):
            return _signature_default(owner["class_path"], parts[-1])
    return _lookup(bare, parts)


def at_default(key: str, resolved: dict, bare: dict) -> bool:
    """Whether the option at dotted ``key`` has its default value in ``resolved`` (see :func:`option_default`)."""
    known, default = option_default(key, resolved, bare)
    found, value = _lookup(resolved, key.split("."))
    return known and found and _plain(value) == default
