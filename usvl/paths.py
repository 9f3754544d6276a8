"""Where usvl keeps generated data and caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The usvl cache root: ``$USVL_CACHE`` or ``~/.cache/usvl``."""
    return Path(os.environ.get("USVL_CACHE", Path.home() / ".cache" / "usvl")).expanduser()
