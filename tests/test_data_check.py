"""``usvl data check`` over a small layout with planted problems, and the data module's bad-file policy."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from layouts import ManifestModule
from PIL import Image, ImageFilter

import usvl.data.check as check
from usvl.data.bad_files import BadFilesError
from usvl.data.check import check_manifest
from usvl.data.cli import data_main

SIZE = 48


def lesion(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A speckled image with a dark disc, and its boolean mask (distinct per seed)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(40, 220, (5, 5), dtype=np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)
    image = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 5, (SIZE, SIZE))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.uniform(15, 33, 2)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(6, 10) ** 2
    image[mask] *= 0.3
    return np.clip(image, 0, 255).astype(np.uint8), mask


def build_layout(root, count: int = 20) -> tuple[pd.DataFrame, dict[str, str]]:
    """``images/`` + ``masks/`` and a manifest; returns it and {planted kind: file name}."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i in range(count):
        name = f"case{i:02d}.png"
        image, mask = lesion(i)
        Image.fromarray(image).save(root / "images" / name)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / name)
        rows.append({"name": name, "image": str(root / "images" / name), "mask": str(root / "masks" / name),
                     "label": i % 2, "label_name": ("benign", "malignant")[i % 2],
                     "split": ("train", "train", "train", "val", "test")[i % 5], "patient": f"P{i:02d}"})
    manifest = pd.DataFrame(rows)
    planted = {}

    def at(i: int, kind: str) -> dict:
        planted[kind] = rows[i]["name"]
        return rows[i]

    row = at(0, "unreadable")
    data = (root / "images" / row["name"]).read_bytes()
    (root / "images" / row["name"]).write_bytes(data[: len(data) // 3])
    at(1, "missing-file")
    (root / "images" / rows[1]["name"]).unlink()
    row = at(2, "size-mismatch")
    Image.new("L", (SIZE - 16, SIZE), 0).save(row["mask"])
    row = at(3, "missing-mask")
    manifest.loc[3, "mask"] = None
    at(4, "unknown-label")
    manifest.loc[4, ["label", "label_name"]] = [-1, "indeterminate"]
    row = at(5, "mask-encoding")
    blurred = Image.open(row["mask"]).filter(ImageFilter.GaussianBlur(2))
    blurred.save(row["mask"])
    row = at(6, "high-bit-depth")
    Image.fromarray(lesion(6)[0].astype(np.uint16) * 257).save(row["image"])
    row = at(7, "mask-size-differs")
    Image.open(row["mask"]).resize((SIZE // 2, SIZE // 2), Image.NEAREST).save(row["mask"])
    row = at(8, "image-encoding")
    grey = lesion(8)[0]
    Image.fromarray(np.stack([grey, grey, grey, np.full_like(grey, 128)], axis=-1), "RGBA").save(row["image"])
    # an exact copy of case10 (train) as case14 (test), a JPEG near copy of case11 (train) as case19 (test)
    shutil.copyfile(rows[10]["image"], rows[14]["image"])
    planted["cross-split-duplicate"] = rows[14]["name"]
    Image.open(rows[11]["image"]).save(root / "images" / "case19.jpg", quality=90)
    manifest.loc[19, "image"] = str(root / "images" / "case19.jpg")
    planted["near-duplicate"] = "case19.png"
    # one patient in train and test
    manifest.loc[[12, 13], "patient"] = "P12"
    manifest.loc[13, "split"] = "test"
    planted["patient-in-two-splits"] = rows[13]["name"]
    return manifest, planted


def test_every_planted_problem_is_named_under_its_kind(tmp_path):
    manifest, planted = build_layout(tmp_path)
    report = check_manifest(manifest, "segmentation", ["benign", "malignant"], threads=1)
    for kind in ("unreadable", "missing-file", "size-mismatch", "missing-mask", "mask-encoding", "high-bit-depth",
                 "mask-size-differs", "image-encoding", "cross-split-duplicate", "patient-in-two-splits"):
        assert planted[kind] in report.names(kind), (kind, report.format())
    assert {"case11.png", "case19.png"} <= report.names("cross-split-duplicate")
    assert {"case10.png", "case14.png"} <= report.names("cross-split-duplicate")
    assert {"case12.png", "case13.png"} == report.names("patient-in-two-splits")
    # labels do not matter for segmentation: an unknown one is only a warning
    assert {(p.kind, p.severity) for p in report.problems if planted["unknown-label"] in p.names} == {
        ("unknown-label", "warning")}
    clean = {f"case{i:02d}.png" for i in (9, 15, 16, 17, 18)}
    assert not any(report.kinds(name) for name in clean), report.format()
    assert not report.ok
    assert {p.severity for p in report.problems if p.kind in ("unreadable", "size-mismatch")} == {"error"}
    assert report.masks["empty"] == 1  # the size-mismatch mask is all black
    assert report.masks["value_sets"]["{0,255}"] >= 10
    assert report.counts["train"]["benign"] + report.counts["train"]["malignant"] == 12


def test_classification_check_reports_unknown_labels_not_masks(tmp_path):
    manifest, planted = build_layout(tmp_path)
    report = check_manifest(manifest, "classification", None, threads=1)
    assert report.class_names == ["benign", "malignant"]  # derived from label/label_name
    assert report.names("unknown-label") == {planted["unknown-label"]}
    assert "indeterminate" in next(p.detail for p in report.problems if p.kind == "unknown-label")
    # masks do not matter for classification: mask problems are warnings
    mask_kinds = ("missing-mask", "size-mismatch")
    assert {p.severity for p in report.problems if p.kind in mask_kinds} == {"warning"}
    assert report.names("missing-mask") == {planted["missing-mask"]}
    assert {p.kind for p in report.errors} == {"unreadable", "missing-file", "unknown-label"}
    assert report.counts["test"].get("unknown") == 1 or report.counts["train"].get("unknown") == 1


def test_cli_check_prints_every_problem_by_name_and_fails(tmp_path, monkeypatch, capsys):
    manifest, planted = build_layout(tmp_path / "data")
    calls = []

    def fake_reader(source, root, task=None, class_names=None, **options):
        calls.append((source, root, task, class_names, options))
        return manifest

    monkeypatch.setattr(check, "read_source_manifest", fake_reader)
    out_json = tmp_path / "report.json"
    code = data_main(["check", "--source", "folder", "--root", str(tmp_path / "data"), "--task", "segmentation",
                      "--class-names", "benign,malignant", "--option", "images=images", "--json", str(out_json),
                      "--threads", "1"])
    assert code == 1
    assert calls == [("folder", str(tmp_path / "data"), "segmentation", ["benign", "malignant"],
                      {"images": "images"})]
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    for kind in ("unreadable", "missing-file", "size-mismatch", "missing-mask", "cross-split-duplicate"):
        assert any(kind in line and planted[kind] in line for line in lines), (kind, printed)
    assert "Masks:" in printed and "Image sizes" in printed and "Problems:" in printed
    data = json.loads(out_json.read_text())
    assert data["n_errors"] == 4
    kinds = {(p["kind"], name) for p in data["problems"] for name in p["names"]}
    assert ("unreadable", planted["unreadable"]) in kinds


def test_cli_check_clean_dataset_exits_zero(tmp_path, monkeypatch, capsys):
    manifest, _ = build_layout(tmp_path / "data")
    clean = manifest.iloc[15:19]  # untouched rows; case19 became a JPEG near copy of case11, not in this subset
    monkeypatch.setattr(check, "read_source_manifest", lambda *args, **kwargs: clean)
    assert data_main(["check", "--source", "folder", "--root", str(tmp_path), "--task", "segmentation"]) == 0
    assert "Problems: 0 errors, 0 warnings" in capsys.readouterr().out


def test_cli_check_reports_an_unknown_source(tmp_path, capsys):
    assert data_main(["check", "--source", "no-such-source", "--root", str(tmp_path)]) == 2
    assert "no-such-source" in capsys.readouterr().err


def test_check_through_the_registry_on_the_release_layout(tiny_thyroid, capsys):
    pytest.importorskip("usvl.data.sources.registry")
    code = data_main(["check", "--source", "nextgen", "--root", str(tiny_thyroid), "--option", "dataset=SynThyroid",
                      "--task", "segmentation", "--threads", "1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "train" in printed and "Masks: 40 listed" in printed


# ---------------------------------------------------------------------------------------------------------------
# the data module's on_bad_file policy and duplicate warning


def test_skip_drops_counts_and_reports_bad_files(tmp_path, caplog):
    manifest, planted = build_layout(tmp_path)
    manifest = manifest.drop(index=[2, 3, 7]).reset_index(drop=True)  # keep classification-relevant problems
    module = ManifestModule(manifest, image_size=16, on_bad_file="skip", decode_cache=False)
    with caplog.at_level(logging.WARNING):
        module.setup(None)
    skipped = dict(module.skipped)
    assert set(skipped) == {planted["unreadable"], planted["missing-file"], planted["unknown-label"]}
    assert "missing" in skipped[planted["missing-file"]]
    assert "indeterminate" in skipped[planted["unknown-label"]]
    assert "Skipped 2 of 17 images" in caplog.text  # missing file and label, before decoding
    assert planted["unreadable"] in caplog.text  # found by the dataset while decoding
    kept = {name for dataset in module.datasets.values() for name in dataset.names}
    assert len(kept) == 17 - 3 and not set(skipped) & kept
    # cross-split duplicates are warned about, by name
    assert "duplicate groups span the splits" in caplog.text and "case14.png" in caplog.text
    assert {"case10.png", "case14.png"} <= set(module.duplicates["name"])


def test_error_policy_names_every_bad_file(tmp_path):
    manifest, planted = build_layout(tmp_path)
    module = ManifestModule(manifest, image_size=16, decode_cache=False)
    with pytest.raises(BadFilesError) as error:
        module.setup("fit")
    message = str(error.value)
    assert planted["missing-file"] in message and planted["unknown-label"] in message
    assert "usvl data check" in message
