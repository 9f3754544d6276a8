"""Exact and near-duplicate detection (pixel hash + dHash)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from usvl.data.duplicates import (
    cross_split_duplicates,
    dhash,
    find_duplicates,
    fingerprint_file,
    hamming,
)


def smooth_image(seed: int, size: int = 96) -> np.ndarray:
    """A speckled, smooth random grey image (distinct per seed)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((size, size), Image.BICUBIC), dtype=np.float32)
    speckle = rng.normal(0, 6, (size, size))
    return np.clip(smooth + speckle, 0, 255).astype(np.uint8)


def noisy(array: np.ndarray, sigma: float = 3.0, seed: int = 99) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(array.astype(np.float32) + rng.normal(0, sigma, array.shape), 0, 255).astype(np.uint8)


def write_set(tmp_path):
    """a, its lossless re-encodings (BMP, RGB PNG), a noisy JPEG near copy, and 8 distinct images."""
    base = smooth_image(0)
    rows = []

    def add(name, array, split, mode="L", **save):
        path = tmp_path / name
        image = Image.fromarray(array)
        (image.convert(mode) if mode != "L" else image).save(path, **save)
        rows.append({"name": name, "image": str(path), "split": split, "label": 0, "patient": None})

    add("a.png", base, "train")
    add("a_copy.bmp", base, "test")
    add("a_rgb.png", base, "train", mode="RGB", compress_level=9)
    add("a_noisy.jpg", noisy(base), "val", quality=92)
    for seed in range(1, 9):
        add(f"other{seed}.png", smooth_image(seed), "train" if seed % 2 else "test")
    return pd.DataFrame(rows)


def test_exact_duplicates_match_across_encodings(tmp_path):
    manifest = write_set(tmp_path)
    exact = fingerprint_file(str(tmp_path / "a.png")).exact
    assert fingerprint_file(str(tmp_path / "a_copy.bmp")).exact == exact
    assert fingerprint_file(str(tmp_path / "a_rgb.png")).exact == exact
    assert fingerprint_file(str(tmp_path / "a_noisy.jpg")).exact != exact
    groups = find_duplicates(manifest, threads=1)
    exact_groups = groups[groups["kind"] == "exact"]
    assert exact_groups["group"].nunique() == 1
    assert set(exact_groups["name"]) == {"a.png", "a_copy.bmp", "a_rgb.png"}


def test_near_duplicate_with_noise_is_found_and_distinct_images_are_not(tmp_path):
    manifest = write_set(tmp_path)
    groups = find_duplicates(manifest, threads=1)
    near = groups[groups["kind"] == "near"]
    assert near["group"].nunique() == 1
    assert set(near["name"]) == {"a.png", "a_copy.bmp", "a_rgb.png", "a_noisy.jpg"}
    assert near["distance"].max() <= 4
    assert not any(name.startswith("other") for name in groups["name"])


def test_distinct_images_are_far_apart_in_dhash():
    hashes = [dhash(smooth_image(seed)) for seed in range(12)]
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert min(distances) > 8
    assert hamming(dhash(smooth_image(0)), dhash(noisy(smooth_image(0)))) <= 4


def test_exact_only_threshold_and_cross_split_selection(tmp_path):
    manifest = write_set(tmp_path)
    exact_only = find_duplicates(manifest, threshold=-1, threads=1)
    assert set(exact_only["kind"]) == {"exact"}
    crossing = cross_split_duplicates(manifest, threads=1)
    assert set(crossing["name"]) == {"a.png", "a_copy.bmp", "a_rgb.png", "a_noisy.jpg"}
    # the same images all in one split: nothing crosses
    assert cross_split_duplicates(manifest.assign(split="train"), threads=1).empty


def test_unreadable_files_are_ignored_not_raised(tmp_path):
    manifest = write_set(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    extra = pd.DataFrame([{"name": "broken.png", "image": str(broken), "split": "train", "label": 0,
                           "patient": None},
                          {"name": "gone.png", "image": str(tmp_path / "gone.png"), "split": "test", "label": 0,
                           "patient": None}])
    groups = find_duplicates(pd.concat([manifest, extra], ignore_index=True), threads=1)
    assert not {"broken.png", "gone.png"} & set(groups["name"])
