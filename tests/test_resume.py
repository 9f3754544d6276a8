"""Resume pieces without training: which run ``--ckpt_path last`` continues, RNG states in checkpoints, init_from."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import torch

from usvl.tasks.init_from import resolve_checkpoint
from usvl.utils.resume import resume_version
from usvl.utils.rng import collect_rng_states, restore_rng_states


def touch(path: Path, mtime: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_last_resolves_to_the_newest_last_checkpoint_of_the_run(tmp_path: Path) -> None:
    root = tmp_path / "thyroid_cls"
    touch(root / "version_0" / "checkpoints" / "last.ckpt", 100)
    newest = touch(root / "version_2" / "checkpoints" / "last-v1.ckpt", 300)
    touch(root / "version_3" / "checkpoints" / "epoch02-auroc0.9.ckpt", 400)  # not a resume checkpoint
    assert resume_version(root, "last") == (2, newest)
    assert resume_version(tmp_path / "other", "last") is None


def test_a_run_logged_without_versions_resumes_in_its_own_folder(tmp_path: Path) -> None:
    last = touch(tmp_path / "checkpoints" / "last.ckpt", 100)
    assert resume_version(tmp_path, "last") == (None, last)


def test_a_checkpoint_file_of_the_run_continues_its_version(tmp_path: Path) -> None:
    root = tmp_path / "thyroid_cls"
    inside = touch(root / "version_4" / "checkpoints" / "epoch01-auroc0.8.ckpt", 100)
    outside = touch(tmp_path / "elsewhere" / "version_1" / "checkpoints" / "last.ckpt", 100)
    assert resume_version(root, str(inside)) == (4, inside)
    assert resume_version(root, str(outside)) is None


def test_init_from_a_run_folder_takes_the_best_checkpoint_not_last(tmp_path: Path) -> None:
    best = touch(tmp_path / "version_0" / "checkpoints" / "epoch03-loss1.2.ckpt", 100)
    touch(tmp_path / "version_0" / "checkpoints" / "last.ckpt", 200)
    assert resolve_checkpoint(tmp_path) == best
    only_last = touch(tmp_path / "b" / "version_0" / "checkpoints" / "last.ckpt", 100)
    assert resolve_checkpoint(tmp_path / "b") == only_last


def test_rng_states_survive_a_weights_only_checkpoint_round_trip() -> None:
    states = collect_rng_states()
    expected = (random.random(), float(np.random.rand()), torch.rand(3).tolist())
    buffer = io.BytesIO()
    torch.save({"usvl": {"rng_states": states}}, buffer)
    buffer.seek(0)
    restore_rng_states(torch.load(buffer, weights_only=True)["usvl"]["rng_states"])
    assert (random.random(), float(np.random.rand()), torch.rand(3).tolist()) == expected
