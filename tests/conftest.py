"""Shared fixtures: offline, one cache per test session, tiny generated data.

The default suite runs on two pytest-xdist workers (``-n 2 --dist loadgroup`` in pyproject's addopts). Each worker
is one process with one torch thread; both share one usvl cache, so tiny data is generated once per session (the
cache's writers are safe across processes). Tests that share an expensive non-function-scoped fixture are kept on
one worker (see :func:`pytest_collection_modifyitems`), so that fixture is set up once, not once per worker.
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
"""``gw0``, ``gw1``, ... in a pytest-xdist worker; ``None`` in a plain (single-process) run."""

if XDIST_WORKER:
    # Two workers on two cores: one thread each (torch, BLAS, decoding, onnxruntime and the `usvl` command all
    # follow USVL_THREADS); oversubscribed threads run several times slower.
    for variable in ("USVL_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    import torch

    torch.set_num_threads(int(os.environ["USVL_THREADS"]))


@pytest.fixture(scope="session")
def usvl_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One usvl cache for the session (shared by the xdist workers), so tiny synthetic data is generated once."""
    if XDIST_WORKER:
        path = tmp_path_factory.getbasetemp().parent / "usvl-cache"  # the run's folder, above the workers' own
        path.mkdir(exist_ok=True)
    else:
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

# --- keeping the users of an expensive shared fixture on one xdist worker ---------------------------------------------

CHEAP_SHARED_FIXTURES = frozenset({"usvl_cache", "tiny_thyroid", "embedded_encoder_factory", "saved_models",
                                   "_threads"})
"""Session- or module-scoped fixtures cheap enough to set up once per worker, so their users need not share one
(``tiny_thyroid`` is generated once anyway, in the shared cache; ``saved_models`` writes tiny random models in a
second or two, while its 42 users take minutes; ``_threads`` only sets torch's thread count)."""


def _shared_fixture_keys(item: pytest.Item) -> dict[str, bool]:
    """The expensive session- and module-scoped fixture values ``item`` uses: key -> whether it is session-scoped."""
    keys = {}
    for name in item.fixturenames:
        definitions = item._fixtureinfo.name2fixturedefs.get(name)
        if not definitions or name in CHEAP_SHARED_FIXTURES:
            continue
        definition = definitions[-1]
        scope = definition.scope
        if scope == "function" or Path(inspect.getfile(definition.func)).resolve().parent != TESTS:
            continue  # per test, or a fixture of pytest or a plugin (tmp_path_factory, ...)
        keys[name if scope == "session" else f"{item.path.stem}.{name}"] = scope == "session"
    return keys


def _join_group(item: pytest.Item, group: str) -> None:
    """Put ``item`` into the xdist group ``group``: the ``<nodeid>@<group>`` convention of ``--dist loadgroup``.

    pytest-xdist's own ``xdist_group`` mark no longer reaches its scheduler under pytest 9 (it rewrites the old
    ``_nodeid`` field, pytest now reads ``_id``: pytest-dev/pytest-xdist#1386), so the suffix is set here, in both.
    """
    suffixed = f"{item.nodeid}@{group}"
    if hasattr(item, "_id"):
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(suffixed)
    else:
        item._nodeid = suffixed
    if item.nodeid != suffixed:
        warnings.warn(f"cannot group {item.nodeid} for xdist: its fixtures may be set up on both workers",
                      pytest.PytestWarning, stacklevel=1)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, put the tests that share an expensive fixture value into one group, and run the groups first.

    Tests are joined transitively: two tests are in one group when a chain of shared fixtures links them (e.g. a
    module's tests that read one session fit and one module-scoped folder of images). Without this, each worker would
    set the fixture up for the tests it happens to get. The groups run first, those holding a session fixture (the
    tiny reproduce grid, the smoke fits) before the rest, largest first, and the single tests fill in behind them, so
    both workers finish at about the same time (``--no-loadscope-reorder`` keeps this order).
    """
    if not XDIST_WORKER or not config.getvalue("loadgroup"):
        return
    parent: dict[str, str] = {}
    session_keys: set[str] = set()

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys_of = []
    for item in items:
        keys = _shared_fixture_keys(item)
        session_keys.update(key for key, is_session in keys.items() if is_session)
        keys_of.append(sorted(keys))
        for key in keys_of[-1][1:]:
            parent[root(key)] = root(keys_of[-1][0])
    groups: dict[str, list[pytest.Item]] = {}
    singles = []
    for item, keys in zip(items, keys_of, strict=True):
        if keys:
            groups.setdefault(root(keys[0]), []).append(item)
        else:
            singles.append(item)
    with_session = {root(key) for key in session_keys}
    ordered = sorted(groups.items(), key=lambda entry: (entry[0] not in with_session, -len(entry[1])))
    for group, members in ordered:
        for item in members:
            _join_group(item, group)
    items[:] = [item for _, members in ordered for item in members] + singles
