"""Leak-free split assignment, nested few-shot subsets, split files, and their use in the data module."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from layouts import ManifestModule
from PIL import Image

from usvl.data.splits import (
    assign_splits,
    few_shot_subset,
    read_split_file,
    save_split_file,
    write_split_file,
)

LEVELS = (1, 2, 5, 10, 20, 50)


def patient_manifest(patients: int = 80, seed: int = 0, split=None) -> pd.DataFrame:
    """Patients with 1-4 images each, 75 % of them label 0; no files behind it."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        label = int(p % 4 == 3)
        for i in range(int(rng.integers(1, 5))):
            rows.append({"name": f"p{p:03d}_{i}.png", "image": f"/nowhere/p{p:03d}_{i}.png", "mask": None,
                         "label": label, "split": split, "patient": f"P{p:03d}", "label_name": str(label)})
    return pd.DataFrame(rows)


def single_manifest(n0: int = 150, n1: int = 50) -> pd.DataFrame:
    rows = [{"name": f"img{i:04d}.png", "image": f"/nowhere/img{i:04d}.png", "mask": None,
             "label": int(i >= n0), "split": None, "patient": None} for i in range(n0 + n1)]
    return pd.DataFrame(rows)


def split_map(manifest: pd.DataFrame) -> dict[str, str]:
    return dict(zip(manifest["name"], manifest["split"], strict=True))


# ---------------------------------------------------------------------------------------------------------------
# assign_splits


def test_patients_never_span_splits_and_fractions_hold():
    manifest = patient_manifest()
    out = assign_splits(manifest, (0.7, 0.1, 0.2), seed=0)
    assert out["split"].notna().all()
    assert out.groupby("patient")["split"].nunique().max() == 1
    share = out["split"].value_counts(normalize=True)
    assert abs(share["train"] - 0.7) < 0.08 and abs(share["val"] - 0.1) < 0.06 and abs(share["test"] - 0.2) < 0.07


def test_splits_are_stratified_by_label():
    out = assign_splits(single_manifest(150, 50), seed=3)
    table = pd.crosstab(out["split"], out["label"])
    assert table.loc["train"].tolist() == [105, 35]
    assert table.loc["val"].tolist() == [15, 5]
    assert table.loc["test"].tolist() == [30, 10]


def test_assignment_is_deterministic_and_independent_of_row_order():
    manifest = patient_manifest(seed=1)
    first = split_map(assign_splits(manifest, seed=7))
    assert first == split_map(assign_splits(manifest, seed=7))
    shuffled = manifest.sample(frac=1.0, random_state=5).reset_index(drop=True)
    assert first == split_map(assign_splits(shuffled, seed=7))
    assert first != split_map(assign_splits(manifest, seed=8))


def test_official_test_split_is_kept_and_train_val_are_carved_from_the_rest():
    manifest = single_manifest(160, 80)
    official = manifest.index % 5 == 0
    manifest.loc[official, "split"] = "test"
    out = assign_splits(manifest, (0.7, 0.1, 0.2), seed=0)
    assert (out.loc[official, "split"] == "test").all()
    rest = out.loc[~official, "split"]
    assert set(rest) == {"train", "val"}
    assert rest.value_counts()["val"] == pytest.approx(len(rest) / 8, abs=2)  # train:val = 7:1


def test_fully_official_splits_are_untouched():
    manifest = single_manifest(20, 10)
    manifest["split"] = ["train", "val", "test"] * 10
    out = assign_splits(manifest, seed=0)
    assert out["split"].tolist() == manifest["split"].tolist()


def test_unassigned_rows_follow_their_patients_official_split():
    manifest = patient_manifest(patients=20)
    first_rows = ~manifest["patient"].duplicated()
    manifest.loc[first_rows, "split"] = ["train", "test"] * 10
    out = assign_splits(manifest, seed=0)
    assert out.groupby("patient")["split"].nunique().max() == 1
    assert (out.loc[first_rows, "split"].values == manifest.loc[first_rows, "split"].values).all()


def test_bad_fractions_and_unknown_splits_are_refused():
    with pytest.raises(ValueError, match="summing to 1"):
        assign_splits(single_manifest(), (0.5, 0.1, 0.1))
    manifest = single_manifest()
    manifest.loc[0, "split"] = "holdout"
    with pytest.raises(ValueError, match="holdout"):
        assign_splits(manifest)


# ---------------------------------------------------------------------------------------------------------------
# few_shot_subset


def test_few_shot_levels_are_nested_stratified_and_keep_eval_splits():
    manifest = assign_splits(single_manifest(300, 90), seed=0)
    train = manifest[manifest["split"] == "train"]
    per_class = train["label"].value_counts().to_dict()
    previous: set[str] = set()
    for percent in LEVELS:
        subset = few_shot_subset(manifest, percent, seed=0)
        names = set(subset.loc[subset["split"] == "train", "name"])
        assert previous <= names, f"{percent} % does not contain the smaller subset"
        previous = names
        counts = subset[subset["split"] == "train"]["label"].value_counts().to_dict()
        for label, n in per_class.items():
            assert counts[label] == max(1, math.ceil(percent * n / 100))
        assert (subset["split"] != "train").sum() == (manifest["split"] != "train").sum()
    assert len(few_shot_subset(manifest, 100, seed=0)) == len(manifest)


def test_few_shot_keeps_one_per_class_and_depends_on_the_seed():
    manifest = assign_splits(single_manifest(300, 20), seed=0)
    subset = few_shot_subset(manifest, 1, seed=0)
    assert sorted(subset[subset["split"] == "train"]["label"].value_counts().to_dict().items()) == [(0, 3), (1, 1)]
    a = set(few_shot_subset(manifest, 10, seed=0)["name"])
    assert a == set(few_shot_subset(manifest, 10, seed=0)["name"])
    assert a != set(few_shot_subset(manifest, 10, seed=1)["name"])


def test_few_shot_takes_whole_patients():
    manifest = assign_splits(patient_manifest(patients=200), seed=0)
    full = manifest[manifest["split"] == "train"].groupby("patient").size()
    for percent in LEVELS:
        subset = few_shot_subset(manifest, percent, seed=2)
        taken = subset[subset["split"] == "train"].groupby("patient").size()
        assert (taken == full[taken.index]).all()


def test_few_shot_percent_must_be_in_range():
    manifest = assign_splits(single_manifest(), seed=0)
    for bad in (0, -1, 101):
        with pytest.raises(ValueError, match="0, 100"):
            few_shot_subset(manifest, bad)


# ---------------------------------------------------------------------------------------------------------------
# split files


def test_split_file_round_trip(tmp_path):
    manifest = assign_splits(patient_manifest(patients=10), seed=0)
    path = write_split_file(manifest, tmp_path / "sub" / "splits.csv")
    assert path.read_text().splitlines()[0] == "name,split,patient"
    table = read_split_file(path)
    assert table["name"].tolist() == manifest["name"].tolist()
    fresh = manifest.assign(split=None)
    applied = read_split_file(path, fresh)
    assert split_map(applied) == split_map(manifest)


def test_split_file_mismatch_names_the_images(tmp_path):
    manifest = assign_splits(single_manifest(10, 5), seed=0)
    path = write_split_file(manifest, tmp_path / "splits.csv")
    other = manifest.copy()
    other.loc[0, "name"] = "newcomer.png"
    with pytest.raises(ValueError) as error:
        read_split_file(path, other)
    message = str(error.value)
    assert "newcomer.png" in message and "img0000.png" in message
    assert "in the split file but not in the manifest" in message
    # a name the manifest lost as a skipped bad file may stay in the file
    assert len(read_split_file(path, manifest.iloc[1:], ignore=["img0000.png"])) == 14


def test_save_split_file_reuses_identical_and_refuses_conflicting(tmp_path):
    manifest = assign_splits(single_manifest(10, 5), seed=0)
    path = tmp_path / "splits.csv"
    assert save_split_file(manifest, path) is True
    assert save_split_file(manifest, path) is False
    other = assign_splits(single_manifest(10, 5), seed=1)
    with pytest.raises(ValueError, match="already exists with different splits"):
        save_split_file(other, path)
    assert save_split_file(other, path, reused=path) is False  # the file the splits came from


# ---------------------------------------------------------------------------------------------------------------
# the data module


def image_manifest(tmp_path, n0: int = 20, n1: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    rows = []
    for i in range(n0 + n1):
        path = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(path)
        rows.append({"name": path.name, "image": str(path), "mask": None, "label": int(i >= n0), "split": None,
                     "patient": None})
    return pd.DataFrame(rows)


def test_module_writes_then_reuses_its_split_file(tmp_path):
    manifest = image_manifest(tmp_path)
    split_file = tmp_path / "run" / "splits.csv"
    first = ManifestModule(manifest, image_size=8, split_file=str(split_file), decode_cache=False)
    first.setup("fit")
    assert split_file.is_file()
    written = read_split_file(split_file)
    assert split_map(first.split_manifest) == dict(zip(written["name"], written["split"], strict=True))
    # another seed, same file: the file wins
    second = ManifestModule(manifest, image_size=8, split_file=str(split_file), split_seed=99, decode_cache=False)
    second.setup("fit")
    assert split_map(second.split_manifest) == split_map(first.split_manifest)


def test_module_saves_splits_in_the_log_dir_and_refuses_a_conflict(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    manifest = image_manifest(tmp_path)
    trainer = pl.Trainer(logger=CSVLogger(str(tmp_path / "logs"), name="run", version=0), accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False)
    module = ManifestModule(manifest, image_size=8, few_shot=50, decode_cache=False)
    module.trainer = trainer
    module.setup("fit")
    saved = tmp_path / "logs" / "run" / "version_0" / "splits.csv"
    assert split_map(read_split_file(saved).assign(image="", label=0)) == split_map(module.split_manifest)
    few = pd.read_csv(saved.with_name("few_shot.csv"))
    assert set(few["name"]) == set(module.manifest.loc[module.manifest["split"] == "train", "name"])
    again = ManifestModule(manifest, image_size=8, decode_cache=False)
    again.trainer = trainer
    again.setup("fit")  # identical splits: fine
    conflicting = ManifestModule(manifest, image_size=8, split_seed=5, decode_cache=False)
    conflicting.trainer = trainer
    with pytest.raises(ValueError, match="already exists with different splits"):
        conflicting.setup("fit")


def test_module_few_shot_subsets_the_training_split_only(tmp_path, caplog):
    manifest = image_manifest(tmp_path, 40, 20)
    full = ManifestModule(manifest, image_size=8, decode_cache=False)
    few = ManifestModule(manifest, image_size=8, few_shot=10, decode_cache=False)
    with caplog.at_level(logging.INFO, logger="usvl.data.datamodule"):
        few.setup("fit")
    full.setup("fit")
    assert len(few.datasets["train"]) == 3 + 2  # ceil(10 % of 28) + ceil(10 % of 14)
    assert len(few.datasets["val"]) == len(full.datasets["val"])
    assert set(few.datasets["train"].names) <= set(full.datasets["train"].names)
    assert "Few-shot: training on 5 of 42" in caplog.text


def test_module_rejects_bad_options():
    with pytest.raises(ValueError, match="few_shot"):
        ManifestModule(pd.DataFrame(), few_shot=0)
    with pytest.raises(ValueError, match="on_bad_file"):
        ManifestModule(pd.DataFrame(), on_bad_file="ignore")
    with pytest.raises(ValueError, match="summing to 1"):
        ManifestModule(pd.DataFrame(), split_fractions=(0.9, 0.1, 0.1))
