"""Acquisition profiles of the generator: only the image formation changes, never the scene, labels or masks."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from usvl.data.synthetic import ACQUISITIONS, PRESETS, generate_dataset, render_sample
from usvl.data.synthetic.acquisition import get_acquisition
from usvl.data.synthetic.physics import attenuation_loss_db, steered_attenuation_loss_db
from usvl.data.synthetic.probe import BeamGrid

SEEDS = (3, 17)
GEOMETRIC = {"deep"}
"""Profiles that change the pixel geometry of the same mask (a deeper field)."""


@pytest.mark.parametrize("preset", ["thyroid", "breast"])
@pytest.mark.parametrize("name", sorted(ACQUISITIONS))
def test_same_scene_labels_and_masks_different_pixels(preset, name):
    for seed in SEEDS:
        base = render_sample(preset, seed, size=64)
        shifted = render_sample(preset, seed, size=64, acquisition=name)
        assert (shifted.label, shifted.descriptors, shifted.caption) == (base.label, base.descriptors, base.caption)
        assert shifted.meta["acquisition"] == name and "acquisition" not in base.meta
        assert np.mean(shifted.image != base.image) > 0.5
        if name in GEOMETRIC:
            scale = get_acquisition(name).depth_scale
            assert shifted.meta["pixel_spacing_mm"] == pytest.approx(base.meta["pixel_spacing_mm"] * scale, rel=1e-3)
            assert shifted.mask.sum() == pytest.approx(base.mask.sum() / scale**2, rel=0.25, abs=8)
        else:
            assert np.array_equal(shifted.mask, base.mask)


@pytest.mark.parametrize("name", sorted(ACQUISITIONS))
def test_profiles_are_deterministic(name):
    a = render_sample("thyroid", 5, size=48, acquisition=name)
    b = render_sample("thyroid", 5, size=48, acquisition=name)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    json.dumps(a.meta)


def test_deep_field_has_black_bars_beside_the_aperture():
    sample = render_sample("thyroid", 5, size=70, acquisition="deep")
    bar = int(70 * (1 - 1 / get_acquisition("deep").depth_scale) / 2) - 1
    assert sample.image[:, :bar].max() == 0 and sample.image[:, -bar:].max() == 0
    assert sample.mask[:, :bar].max() == 0 and sample.image[:, 35].mean() > 0


def test_profiles_change_what_they_say():
    base = [render_sample("thyroid", s, size=96) for s in SEEDS]

    def mean_of(name):
        return np.mean([render_sample("thyroid", s, size=96, acquisition=name).image.mean() for s in SEEDS])

    assert mean_of("high_gain") > np.mean([b.image.mean() for b in base]) + 20
    low_dr = [render_sample("thyroid", s, size=96, acquisition="low_dynamic_range").image for s in SEEDS]
    assert np.mean([(i == 0).mean() + (i == 255).mean() for i in low_dr]) > np.mean(
        [(b.image == 0).mean() + (b.image == 255).mean() for b in base])


def test_unknown_profile_and_convex_depth_rejected():
    with pytest.raises(KeyError, match="available"):
        render_sample("thyroid", 1, size=32, acquisition="nope")
    with pytest.raises(ValueError, match="convex"):
        render_sample("prostate", 1, size=32, acquisition="deep")
    assert render_sample("prostate", 1, size=32, acquisition="low_freq").meta["acquisition"] == "low_freq"


def test_profile_key_tracks_its_settings():
    profile = get_acquisition("low_freq")
    assert profile.key.startswith("low_freq-") and profile.key == get_acquisition("low_freq").key
    assert replace(profile, f0_scale=0.5).key != profile.key


def test_steered_attenuation_fans_a_shadow_out():
    grid = BeamGrid(x_mm=np.linspace(-10, 10, 41), z_mm=np.linspace(0, 20, 41))
    alpha = np.zeros(grid.shape, np.float32)
    alpha[10, 20] = 10.0
    assert np.array_equal(steered_attenuation_loss_db(alpha, grid, 5.0, 0.0), attenuation_loss_db(alpha, grid, 5.0))
    steered = steered_attenuation_loss_db(alpha, grid, 5.0, 20.0)
    straight = attenuation_loss_db(alpha, grid, 5.0)
    assert straight[-1, 20] > 0 and straight[-1].argmax() == 20
    assert steered[-1].argmax() != 20 and steered[:10].max() == 0


@pytest.mark.parametrize("name", ["low_freq", "deep"])
def test_shifted_test_split_matches_the_full_dataset(tmp_path, name):
    full = generate_dataset("thyroid", tmp_path / "full", profile="tiny", seed=0, size=48)
    shifted = generate_dataset("thyroid", tmp_path / "shift", profile="tiny", seed=0, size=48, acquisition=name,
                               splits=("test",))
    ds = PRESETS["thyroid"].dataset_name
    assert (shifted / "classification" / ds / "train.txt").read_text() == ""
    assert (shifted / "classification" / ds / "test.txt").read_text() == (
        full / "classification" / ds / "test.txt").read_text()
    names = (full / "classification" / ds / "test.txt").read_text().split()
    labels = dict(line.split(",") for line in (full / "classification" / ds / "labels.csv").read_text().split())
    shifted_labels = dict(line.split(",") for line in (shifted / "classification" / ds / "labels.csv").read_text()
                          .split())
    assert shifted_labels == {n: labels[n] for n in names}
    manifest = json.loads((shifted / "generator.json").read_text())
    assert manifest["splits"] == ["test"] and manifest["acquisition"]["key"] == get_acquisition(name).key
    records = [json.loads(line) for line in (shifted / "metadata.jsonl").read_text().splitlines()]
    assert {r["acquisition"] for r in records} == {name}


def test_data_module_tests_on_the_shifted_twin(tmp_path):
    from usvl.data import SyntheticDataModule

    dm = SyntheticDataModule(preset="thyroid", profile="tiny", image_size=32, batch_size=4, generated_size=48,
                             root=str(tmp_path / "own"), test_root=str(tmp_path / "shifted"),
                             test_acquisition="compounded")
    plain = SyntheticDataModule(preset="thyroid", profile="tiny", image_size=32, batch_size=4, generated_size=48,
                                root=str(tmp_path / "own"))
    dm.setup("test")
    plain.setup("test")
    assert dm.datasets["test"].names == plain.datasets["test"].names
    assert dm.datasets["test"].labels.tolist() == plain.datasets["test"].labels.tolist()
    assert not dm.datasets["test"].images.equal(plain.datasets["test"].images)
    assert dm.test_origin["acquisition"] == "compounded" and dm.test_origin["splits"] == ["test"]
    with pytest.raises(ValueError, match="test_preset"):
        SyntheticDataModule(preset="thyroid", test_acquisition="deep", test_split="all")
    with pytest.raises(KeyError, match="available"):
        SyntheticDataModule(preset="thyroid", test_acquisition="nope")


def test_data_generate_writes_a_shifted_test_set(tmp_path, capsys):
    from usvl.data.cli import data_main

    root = tmp_path / "external"
    assert data_main(["generate", "--preset", "thyroid", "--profile", "tiny", "--acquisition", "high_gain",
                      "--splits", "test", "--root", str(root), "--size", "48", "--workers", "1"]) == 0
    manifest = json.loads((root / "generator.json").read_text())
    assert manifest["splits"] == ["test"] and manifest["acquisition"]["name"] == "high_gain"
    assert len(list((root / "all" / "images").glob("*.png"))) == 8
