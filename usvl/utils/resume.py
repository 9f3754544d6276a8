"""Where a resumed fit continues: the run folder (``<save_dir>/<name>/version_N``) whose ``last.ckpt`` it restarts from.

Lightning resolves ``ckpt_path="last"`` inside the checkpoint folder of the *current* logger version, and a new
process gets a new ``version_N``: out of the box ``usvl fit --ckpt_path last`` would find nothing and train from
scratch. :func:`resume_version` finds the run's newest ``last.ckpt`` instead, so the CLI can pin the logger to that
version: the resumed run writes into the same folder and its checkpoint callback keeps the best score so far.
"""

from __future__ import annotations

import re
from pathlib import Path

LAST_CHECKPOINT = re.compile(r"last(-v\d+)?\.ckpt")
"""Names Lightning gives the ``save_last`` checkpoint."""

VERSION_FOLDER = re.compile(r"version_(\d+)")


def last_checkpoints(folder: Path) -> list[Path]:
    """The ``last*.ckpt`` files directly in ``folder/checkpoints``."""
    checkpoints = folder / "checkpoints"
    if not checkpoints.is_dir():
        return []
    return [path for path in checkpoints.iterdir() if LAST_CHECKPOINT.fullmatch(path.name) and path.is_file()]


def resume_version(run_root: Path, ckpt_path: str) -> tuple[int | None, Path] | None:
    """The logger version a fit resumed from ``ckpt_path`` continues in, and the checkpoint it restarts from.

    Args:
        run_root: The run's logger root, ``<save_dir>/<name>``, whose subfolders are ``version_N``.
        ckpt_path: ``"last"`` (the newest ``version_*/checkpoints/last*.ckpt``, by modification time, or
            ``checkpoints/last*.ckpt`` of the root itself for runs logged without versions), or a checkpoint file:
            when it lies in ``<run_root>/version_N/checkpoints/``, that run continues.

    Returns:
        ``(N, file)``: continue in ``version_N`` (``None``: in the root itself); ``None``: no such checkpoint, or
        a file outside the run's folders (a new version starts).
    """
    if ckpt_path != "last":
        file = Path(ckpt_path)
        folder = file.resolve().parent.parent
        match = VERSION_FOLDER.fullmatch(folder.name)
        if file.parent.name != "checkpoints" or match is None or folder.parent != run_root.resolve():
            return None
        return int(match.group(1)), file
    candidates = [(path, None) for path in last_checkpoints(run_root)]
    if run_root.is_dir():
        for folder in run_root.iterdir():
            match = VERSION_FOLDER.fullmatch(folder.name)
            if match is not None and folder.is_dir():
                candidates += [(path, int(match.group(1))) for path in last_checkpoints(folder)]
    if not candidates:
        return None
    path, version = max(candidates, key=lambda item: item[0].stat().st_mtime_ns)
    return version, path
