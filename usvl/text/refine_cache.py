"""Refine an experiment's class descriptions when it asks, once: the refinement is cached and reused.

An experiment that names a refiner (``text.refiner``) gets its descriptions refined before training starts; the
JSONL (same format and provenance as ``usvl text refine``) is stored under ``$USVL_CACHE/refined/<key>.jsonl``,
keyed by the refiner's settings, the instruction, every source sentence and the size and modification time of
local model files. Later runs read the file and never load the LLM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from filelock import FileLock

from usvl.text.prompts import load_refinements, resolve_config_path
from usvl.text.refine import DEFAULT_INSTRUCTION, build_refiner, load_texts, refine_texts, write_jsonl_new

log = logging.getLogger(__name__)


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's (CPU and CUDA) random states on exit; LLM generation seeds them."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def load_refiner_spec(spec: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Refiner settings from a mapping or a YAML file of one (``configs/text/refiners/``); keys as in the file.

    Raises:
        FileNotFoundError: The YAML file does not exist.
        ValueError: The settings are not a mapping with a refiner ``name``.
    """
    if isinstance(spec, (str, Path)):
        path = resolve_config_path(spec)
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        where = str(path)
    else:
        loaded, where = spec, "text.refiner"
    if not isinstance(loaded, dict) or not loaded.get("name"):
        raise ValueError(f"{where}: refiner settings need a mapping with 'name' (static, transformers or openai) "
                         f"and the back-end's options; got {loaded!r}")
    return {str(key).replace("-", "_"): value for key, value in loaded.items()}


def _local_files(options: dict[str, Any]) -> list[tuple[str, int, int]]:
    """Name, size and modification time of the local files the refiner reads (model folder or file, static path)."""
    files: list[tuple[str, int, int]] = []
    for key in ("model", "path"):
        value = options.get(key)
        location = Path(str(value)) if value else None
        if location is None or not location.exists():
            continue
        candidates = sorted(p for p in location.rglob("*") if p.is_file()) if location.is_dir() else [location]
        files += [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in candidates]
    return files


def refinement_key(spec: dict[str, Any], instruction: str, sources: list[str]) -> str:
    """A stable hash of the refiner settings, the instruction, the source sentences and the local model files."""
    payload = json.dumps({"spec": spec, "instruction": instruction, "sources": sources,
                          "files": _local_files(spec)}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def cached_refinement(descriptions: str | Path, spec: dict[str, Any], folder: Path) -> Path:
    """The refinement JSONL of ``descriptions`` by the refiner ``spec``: read from ``folder`` or made once.

    Args:
        descriptions: Class descriptions (``configs/text/*.yaml``).
        spec: ``{"name": <static|transformers|openai>, "prompt_file": optional, **the back-end's options}``
            (the options of :func:`usvl.text.refine.build_refiner`, e.g. ``model``, ``gguf_file``, ``base_url``).
        folder: Cache folder of refinements.

    Returns:
        The JSONL path, ready for :func:`usvl.text.prompts.load_refinements`.

    Raises:
        ValueError: ``spec`` has no refiner ``name`` or names an unknown one.
    """
    options = dict(spec)
    name = options.pop("name", None)
    if not name:
        raise ValueError(f"text.refiner needs a 'name' (static, transformers or openai); got {spec}")
    prompt_file = options.pop("prompt_file", None)
    instruction = Path(prompt_file).read_text(encoding="utf-8").strip() if prompt_file else DEFAULT_INSTRUCTION
    items = load_texts(descriptions)
    sources = [item["text"] for item in items]
    key = refinement_key(spec, instruction, sources)
    path = folder / f"{key}.jsonl"
    if refinement_problem(path, sources) is None:
        log.info("Refinement cache hit: %s (%d sentences; the %s refiner is not loaded)", path, len(items), name)
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f".{key}.lock")):  # two runs needing one refinement: one refines, one waits
        problem = refinement_problem(path, sources)
        if problem is None:
            log.info("Refinement cache hit: %s, written meanwhile by another process", path)
            return path
        if path.exists():
            log.warning("Refinement cache %s is %s; refining again and replacing it", path, problem)
            path.unlink()
        started = time.perf_counter()
        with preserved_random_state():  # a run that refines must train exactly like one that reads the cache
            records, summary = refine_texts(items, build_refiner(name, **options), instruction)
        write_jsonl_new(path, records)
    log.info("Refinement cache miss: %s in %.1f s; saved %s", summary.format(), time.perf_counter() - started, path)
    return path


def refinement_problem(path: Path, sources: list[str]) -> str | None:
    """What is wrong with the cached refinement ``path`` of ``sources``, or ``None`` when it is usable.

    Returns:
        ``"absent"``, ``"unreadable (<why>)"`` (not JSONL of ``source``/``refined`` strings, e.g. truncated
        mid-line) or ``"missing N of M sentences"``; ``None`` when every source sentence has a refinement.
    """
    if not path.is_file():
        return "absent"
    try:
        mapping, _ = load_refinements(path)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return f"unreadable ({error})"
    missing = [text for text in sources if text.strip() not in mapping]
    return f"missing {len(missing)} of {len(sources)} sentences" if missing else None
