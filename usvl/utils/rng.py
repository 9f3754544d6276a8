"""The process's random-number generator states, saved in checkpoints so a resumed fit draws what the killed one would.

Lightning restores the weights, optimiser, scheduler and loop counters from a checkpoint but not the global random
streams (shuffling, augmentation, dropout). Without them a resumed run trains on other batches and ends with other
numbers than an uninterrupted one; with them, in deterministic mode, it ends with the same.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def collect_rng_states() -> dict[str, Any]:
    """The states of Python's ``random``, NumPy's global generator, torch's CPU generator and every CUDA generator.

    Only tensors and plain Python values, so checkpoints holding them load with ``torch.load(weights_only=True)``.
    """
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the generators from :func:`collect_rng_states`'s output; absent entries are left as they are.

    CUDA states are restored when CUDA is available and the saved number of devices matches this process's.
    """
    if "python" in states:
        random.setstate(_as_python_state(states["python"]))
    if "numpy" in states:
        np.random.set_state(_as_numpy_state(states["numpy"]))
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    cuda = states.get("torch.cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_python_state(state: Any) -> tuple:
    """``random.getstate()`` output after a round trip through a checkpoint (tuples may come back as lists)."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


def _numpy_state() -> dict[str, Any]:
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _as_numpy_state(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["position"], state["has_gauss"], state["cached_gaussian"]
