"""A cell's resolved config (what ``usvl fit --print_config`` prints) and its hash, the identity of a run.

Two cells with the same resolved config are the same run (e.g. the 100 % point of a few-shot curve and the main
block's cell on the same profile): the grid runs it once. Editing a config a cell uses changes its hash, so the
old run is no longer counted and the cell runs again (the old run directory stays on disk).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
from collections.abc import Sequence

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
