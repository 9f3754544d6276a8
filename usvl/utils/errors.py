"""Errors a user can fix from the message alone: the ``usvl`` command prints them without a traceback."""

from __future__ import annotations

DEBUG_VARIABLE = "USVL_DEBUG"
"""Set to 1 to see the traceback of a :class:`UserError` too."""


class UserError(Exception):
    """A mistake in the input (files, config, checkpoint, options) whose message names it and says what to do.

    Subclasses also derive from the built-in type that fits (``ValueError``, ``RuntimeError``, ...), so code that
    catches those keeps working. ``usvl`` prints ``usvl: error: <message>`` and exits with status 2 instead of a
    traceback; with ``USVL_DEBUG=1`` it raises as usual.
    """


__all__ = ["DEBUG_VARIABLE", "UserError"]
