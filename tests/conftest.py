"""Shared fixtures: offline, one cache per test session, tiny generated data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def usvl_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One usvl cache for the session, so tiny synthetic data is generated once."""
    path = tmp_path_factory.mktemp("usvl-cache")
    os.environ["USVL_CACHE"] = str(path)
    return path


@pytest.fixture(autouse=True)
def _offline_cache(usvl_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USVL_CACHE", str(usvl_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_thyroid(usvl_cache: Path) -> Path:
    """The tiny synthetic thyroid dataset in the release layout."""
    from usvl.data.sources.synthetic import ensure_synthetic

    return ensure_synthetic("thyroid", "tiny", seed=0, size=256, workers=1)


@pytest.fixture(scope="session")
def embedded_encoder_factory():
    """Build the embedded encoder from its packaged weights."""
    from usvl.models.encoders import LiTEffNetMiniLM

    def build(**kwargs):
        return LiTEffNetMiniLM(**kwargs)

    return build


from reproduce_grid import finished_grid  # noqa: E402,F401  (session fixture: a tiny reproduce grid, run once)
from smoke_runs import breast_seg_fit, thyroid_cls_fit  # noqa: E402,F401  (session fixtures: smoke fits, run once)
