"""The disk cache of decoded arrays: hit, miss, invalidation, cache=False, skipped rows, broken entries."""

import json
import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from usvl.data.dataset import UltrasoundDataset
from usvl.data.decode_cache import DecodeCache, default_root


def write_split(folder, count: int = 4) -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        image = folder / f"s{index}.png"
        Image.fromarray(np.full((20, 20), 30 * index, np.uint8)).save(image)
        mask = np.zeros((20, 20), np.uint8)
        mask[2:2 + 2 * index + 2, 5:15] = 255
        Image.fromarray(mask).save(folder / f"s{index}_mask.png")
        rows.append({"name": f"s{index}", "image": str(image), "mask": str(folder / f"s{index}_mask.png"),
                     "label": index % 2})
    return pd.DataFrame(rows)


def test_miss_then_hit_gives_the_same_arrays(tmp_path, caplog):
    manifest = write_split(tmp_path / "data")
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="usvl.data.decode_cache"):
        first = UltrasoundDataset(manifest, 16, with_masks=True, cache=cache)
    assert not first.cache_hit and "cache miss" in caplog.text and str(first.cache_path) in caplog.text
    assert first.cache_path.is_file() and first.cache_path.parent == cache
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="usvl.data.decode_cache"):
        second = UltrasoundDataset(manifest, 16, with_masks=True, cache=cache)
    assert second.cache_hit and "cache hit" in caplog.text and str(cache) in caplog.text
    assert torch.equal(first.images, second.images) and torch.equal(first.masks, second.masks)
    assert second.names == first.names and torch.equal(second.labels, first.labels)
    assert not isinstance(second.images.numpy(), np.memmap) and second.images.numpy().flags.writeable
    meta = json.loads(first.cache_path.read_text())
    assert meta["names"] == ["s0", "s1", "s2", "s3"] and meta["skipped"] == []
    entries = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]  # the split's lock file stays
    assert sorted(name.split(".", 1)[1] for name in entries) == ["images.npy", "json", "masks.npy"]


def test_labels_come_from_the_manifest_on_a_hit(tmp_path):
    manifest = write_split(tmp_path / "data")
    UltrasoundDataset(manifest, 16, cache=tmp_path / "cache")
    relabelled = manifest.assign(label=[1, 1, 0, 0])
    dataset = UltrasoundDataset(relabelled, 16, cache=tmp_path / "cache")
    assert dataset.cache_hit and dataset.labels.tolist() == [1, 1, 0, 0]


def test_size_and_masks_are_part_of_the_key(tmp_path):
    manifest = write_split(tmp_path / "data")
    keys = {DecodeCache(manifest["image"], manifest["mask"], size, masks, tmp_path).key
            for size in (16, 32) for masks in (False, True)}
    assert len(keys) == 4
    UltrasoundDataset(manifest, 16, with_masks=False, cache=tmp_path / "cache")
    assert not UltrasoundDataset(manifest, 16, with_masks=True, cache=tmp_path / "cache").cache_hit
    assert not UltrasoundDataset(manifest, 24, with_masks=True, cache=tmp_path / "cache").cache_hit


def test_changed_file_invalidates_and_stale_entry_is_removed(tmp_path, caplog):
    manifest = write_split(tmp_path / "data")
    cache = tmp_path / "cache"
    first = UltrasoundDataset(manifest, 16, with_masks=True, cache=cache)
    path = manifest.loc[2, "image"]
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched only
    touched = UltrasoundDataset(manifest, 16, with_masks=True, cache=cache)
    assert not touched.cache_hit and touched.cache_path != first.cache_path
    assert not first.cache_path.exists() and len(list(cache.glob("*.json"))) == 1
    assert UltrasoundDataset(manifest, 16, with_masks=True, cache=cache).cache_hit
    Image.fromarray(np.full((20, 20), 222, np.uint8)).save(path)  # rewritten: new content
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 9_000_000_000))
    rewritten = UltrasoundDataset(manifest, 16, with_masks=True, cache=cache)
    assert not rewritten.cache_hit and int(rewritten.images[2].float().mean()) == 222
    UltrasoundDataset(manifest, 16, with_masks=False, cache=cache)
    mask_path = manifest.loc[0, "mask"]
    os.utime(mask_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 7_000_000_000))
    assert not UltrasoundDataset(manifest, 16, with_masks=True, cache=cache).cache_hit
    assert UltrasoundDataset(manifest, 16, with_masks=False, cache=cache).cache_hit  # masks are not in its key


def test_cache_false_writes_nothing(tmp_path, usvl_cache):
    manifest = write_split(tmp_path / "data")
    before = set(default_root().glob("*")) if default_root().exists() else set()
    dataset = UltrasoundDataset(manifest, 12, with_masks=True, cache=False)
    after = set(default_root().glob("*")) if default_root().exists() else set()
    assert dataset.cache_path is None and not dataset.cache_hit and after == before
    default = UltrasoundDataset(manifest, 12, with_masks=True)  # cache=True: under USVL_CACHE/decoded
    assert default.cache_path.parent == usvl_cache / "decoded" == default_root()
    assert UltrasoundDataset(manifest, 12, with_masks=True, cache=True).cache_hit


def test_skipped_rows_are_cached_and_reported_again(tmp_path, caplog):
    manifest = write_split(tmp_path / "data")
    (tmp_path / "data" / "s1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    cache = tmp_path / "cache"
    first = UltrasoundDataset(manifest, 16, on_bad_file="skip", cache=cache)
    assert len(first) == 3 and [n for n, _ in first.skipped] == ["s1"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = UltrasoundDataset(manifest, 16, on_bad_file="skip", cache=cache)
    assert again.cache_hit and again.skipped == first.skipped and again.names == ["s0", "s2", "s3"]
    assert "Skipped 1 of 4" in caplog.text and "s1" in caplog.text
    assert again.labels.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="s1.png"):
        UltrasoundDataset(manifest, 16, on_bad_file="error", cache=cache)


def test_broken_entry_is_rebuilt(tmp_path, caplog):
    manifest = write_split(tmp_path / "data")
    cache = tmp_path / "cache"
    first = UltrasoundDataset(manifest, 16, cache=cache)
    images = next(cache.glob("*.images.npy"))
    images.write_bytes(images.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="usvl.data.decode_cache"):
        rebuilt = UltrasoundDataset(manifest, 16, cache=cache)
    assert not rebuilt.cache_hit and "unreadable" in caplog.text
    assert torch.equal(rebuilt.images, first.images)
    assert UltrasoundDataset(manifest, 16, cache=cache).cache_hit
    assert not list(cache.glob(".*tmp"))


def test_unwritable_cache_only_warns(tmp_path, caplog):
    manifest = write_split(tmp_path / "data")
    blocker = tmp_path / "not a folder"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="usvl.data.decode_cache"):
        dataset = UltrasoundDataset(manifest, 16, cache=blocker)
    assert len(dataset) == 4 and "Could not write" in caplog.text
