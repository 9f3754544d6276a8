"""The ``usvl`` command: the Lightning subcommands plus ``usvl data``, ``text``, ``reproduce``, ``export``, ``app``."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

from usvl.utils.errors import DEBUG_VARIABLE, UserError

if TYPE_CHECKING:
    from lightning.pytorch.cli import ArgsType

    from usvl.lightning_cli import (
        DESCRIPTION,
        USVLCLI,
        console_trainer_kwargs,
        run_lightning,
        stored_class_names,
    )

__all__ = ["DESCRIPTION", "USVLCLI", "console_trainer_kwargs", "main", "run_lightning", "stored_class_names"]

# Importing this module stays cheap (no torch, no Lightning): the ``usvl`` console script imports it, and so does
# every process that ``multiprocessing`` spawns from ``usvl`` (the synthetic-data workers), which need neither.
# These names are :mod:`usvl.lightning_cli`'s, loaded on first use.
_LIGHTNING_CLI_NAMES = frozenset(__all__) - {"main"}


def __getattr__(name: str) -> Any:
    if name in _LIGHTNING_CLI_NAMES:
        return getattr(importlib.import_module("usvl.lightning_cli"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(args: ArgsType = None) -> int | None:
    """Entry point of the ``usvl`` console script; returns the exit code of ``usvl data`` or ``usvl text``.

    A :class:`usvl.utils.errors.UserError` (bad files, a checkpoint of another model, missing weights, a bad grid,
    a non-finite loss, ...) is printed as ``usvl: error: <message>`` with exit status 2, without a traceback; set
    ``USVL_DEBUG=1`` to get the traceback.
    """
    try:
        return _dispatch(args)
    except UserError as error:
        if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
            raise
        logging.getLogger("usvl").debug("User error", exc_info=True)
        print(f"usvl: error: {error}\n(set {DEBUG_VARIABLE}=1 for the traceback)", file=sys.stderr)
        return 2


def _dispatch(args: ArgsType) -> int | None:
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The frozen towers are in eval mode on purpose (fixed batch-norm statistics); Lightning warns about it.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # `usvl predict` streams an IterableDataset that shards its rows across workers itself and has a true length;
    # the prediction writers need no batch indices. Lightning warns about both.
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices fetched from your dataloader")
    # With DDP the metrics are torchmetrics values computed over every rank's samples (already synced), not per-rank
    # numbers to average; Lightning recommends sync_dist for every epoch-level value it sees.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(train|val|test)/")
    from usvl.utils.allocator import keep_freed_memory
    from usvl.utils.threads import configure_threads

    configure_threads()
    keep_freed_memory()
    if argv and argv[0] == "data":
        from usvl.data.cli import data_main

        return data_main(argv[1:])
    if argv and argv[0] == "app":
        from usvl.app.cli import app_main

        return app_main(argv[1:])
    if argv and argv[0] == "export":
        from usvl.export.cli import export_main

        return export_main(argv[1:])
    if argv and argv[0] == "reproduce":
        from usvl.reproduce.cli import reproduce_main

        return reproduce_main(argv[1:])
    if argv and argv[0] == "text":
        from usvl.text.cli import text_main

        return text_main(argv[1:])
    from usvl.lightning_cli import run_lightning

    run_lightning(args)
    return None
