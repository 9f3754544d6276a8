"""Bad files of a run: the error that names them (``on_bad_file="error"``) and the list a run keeps of them (``skip``).

A bad file is one a run cannot use: missing, unreadable (truncated, empty, not an image), a mask that does not belong
to its image, a label outside the classes, or a link the reader had to skip (a symlink loop). Under ``error`` the
data module raises :class:`BadFilesError` naming them before training starts; under ``skip`` it leaves them out and
writes them to ``skipped_files.csv`` (:data:`SKIPPED_FILES`) in the run's log folder, one row each.

This module depends on nothing else in :mod:`usvl.data`. :class:`BadFilesError` is a
:class:`usvl.utils.errors.UserError`: the ``usvl`` command prints it without a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from usvl.utils.atomic import write_csv_atomic
from usvl.utils.errors import UserError

SKIPPED_FILES = "skipped_files.csv"
"""The file name of a run's skip list, in its log folder."""

NEXT_STEPS = (
    "Fix or remove them, or set on_bad_file: skip (--data.init_args.on_bad_file skip) to train without them "
    f"(the run lists them in {SKIPPED_FILES}); `usvl data check` reports every problem of a dataset."
)
"""What the error of bad files advises."""


class BadFilesError(UserError, ValueError):
    """Files listed in a manifest are missing or unusable; the message names every one (up to a limit)."""


class BadFile(NamedTuple):
    """One bad file: the manifest ``name``, its split (None when not known yet) and why it cannot be used."""

    name: str
    split: str | None
    reason: str

    def describe(self) -> str:
        """``name [split]: reason`` (without the split when it is not known)."""
        return f"{self.name}{f' [{self.split}]' if self.split else ''}: {self.reason}"


def bad_files_error(bad: Sequence[BadFile], total: int, limit: int = 20) -> BadFilesError:
    """The error naming ``bad`` (the first ``limit``, then a count) and saying what to do next.

    Args:
        bad: The bad files.
        total: How many images were looked at, for the count.
        limit: How many to name.
    """
    listed = "; ".join(item.describe() for item in bad[:limit])
    more = f"; and {len(bad) - limit} more" if len(bad) > limit else ""
    return BadFilesError(f"{len(bad)} of {total} images are unusable: {listed}{more}. {NEXT_STEPS}")


def write_skipped_files(path: str | Path, skipped: Sequence[BadFile]) -> Path:
    """Write the skip list (columns ``name``, ``split``, ``reason``; a header only when nothing was skipped).

    The file is replaced atomically, so a reader never sees half of it.

    Returns:
        The path written.
    """
    return write_csv_atomic(path, pd.DataFrame(list(skipped), columns=list(BadFile._fields)))
