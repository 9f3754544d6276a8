"""Outputs and caches are never half-written, never lost to a concurrent writer, and rebuilt when damaged."""

import json
import logging
import multiprocessing
import time

import pytest
from test_decode_cache import write_split
from test_text_cache import write_descriptions

from usvl.data import dataset as dataset_module
from usvl.data.dataset import UltrasoundDataset
from usvl.text.refine_cache import cached_refinement
from usvl.utils.atomic import atomic_output, write_json_unique, write_text_atomic

FORK = multiprocessing.get_context("fork")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text_atomic(tmp_path / "result.json", "old")
    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        temporary.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_exclusive_output_refuses_an_existing_name(tmp_path):
    target = write_text_atomic(tmp_path / "refined.jsonl", "first")
    with pytest.raises(FileExistsError):
        write_text_atomic(target, "second", exclusive=True)
    assert target.read_text() == "first"


def _rewrite(path, letter: str, times: int) -> None:
    for _ in range(times):
        write_text_atomic(path, letter * 2_000_000)


def test_a_reader_never_sees_a_mixed_or_partial_file_while_two_processes_rewrite_it(tmp_path):
    target = write_text_atomic(tmp_path / "shared.txt", "a" * 2_000_000)
    writers = [FORK.Process(target=_rewrite, args=(target, letter, 15)) for letter in "ab"]
    for writer in writers:
        writer.start()
    reads = 0
    while any(writer.is_alive() for writer in writers):
        content = target.read_text()
        assert len(content) == 2_000_000 and len(set(content)) == 1
        reads += 1
    assert all(writer.exitcode == 0 for writer in writers)
    assert reads > 0 and not list(tmp_path.glob(".*tmp"))


def _write_metrics(folder, worker: int, times: int) -> None:
    for index in range(times):
        write_json_unique(folder / "test_metrics.json", {"worker": worker, "index": index})


def test_two_processes_writing_test_metrics_into_one_folder_lose_nothing(tmp_path):
    writers = [FORK.Process(target=_write_metrics, args=(tmp_path, worker, 20)) for worker in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    payloads = [json.loads(path.read_text()) for path in tmp_path.glob("test_metrics*.json")]
    assert sorted((p["worker"], p["index"]) for p in payloads) == [(w, i) for w in range(2) for i in range(20)]


def _open_split(manifest, cache, start, results) -> None:
    original = dataset_module._decode_split

    def slow_decode(*args, **kwargs):
        time.sleep(1.0)  # long enough for the other process to ask for the same entry meanwhile
        return original(*args, **kwargs)

    dataset_module._decode_split = slow_decode
    start.wait()
    results.put(UltrasoundDataset(manifest, 16, cache=cache).cache_hit)


def test_processes_opening_one_split_at_once_decode_it_once(tmp_path):
    manifest = write_split(tmp_path / "data")
    start, results = FORK.Barrier(2), FORK.Queue()
    openers = [FORK.Process(target=_open_split, args=(manifest, tmp_path / "cache", start, results))
               for _ in range(2)]
    for opener in openers:
        opener.start()
    hits = sorted(results.get(timeout=60) for _ in openers)
    for opener in openers:
        opener.join()
    assert hits == [False, True], "the second process should wait for the first one's entry, not decode again"


@pytest.mark.parametrize("damage", ["truncated", "missing_sentence"])
def test_a_damaged_refinement_cache_is_refined_again_with_a_warning(tmp_path, caplog, damage):
    descriptions = write_descriptions(tmp_path / "d.yaml", ["smooth oval nodule"], ["irregular nodule"])
    table = tmp_path / "static.jsonl"
    table.write_text(json.dumps({"source": "smooth oval nodule", "refined": "An oval, smooth nodule."}) + "\n")
    spec = {"name": "static", "path": str(table)}
    path = cached_refinement(descriptions, spec, tmp_path / "refined")
    good = path.read_text()
    lines = good.splitlines(keepends=True)
    path.write_text(good[: len(good) // 2] if damage == "truncated" else lines[0])
    with caplog.at_level(logging.WARNING, logger="usvl.text.refine_cache"):
        again = cached_refinement(descriptions, spec, tmp_path / "refined")
    assert again == path and "refining again" in caplog.text
    assert [json.loads(line)["refined"] for line in path.read_text().splitlines()] == \
        [json.loads(line)["refined"] for line in lines]
