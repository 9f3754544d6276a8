"""Synthetic twins of the lymph-node (LN-INT / LN-EXT) and micro-US prostate datasets, and the cross-centre module."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from shipped_configs import smoke

from usvl.data.synthetic import PRESETS, generate_dataset, render_sample
from usvl.data.synthetic.presets.lymph_node import EXT, INT
from usvl.data.synthetic.probe import ConvexProbe, field_mask, make_beam_grid
from usvl.data.synthetic.render import sample_label

NEW_PRESETS = ("ln-int", "ln-ext", "prostate")


def test_presets_registered():
    for name, ds, prefix in (("ln-int", "SynLN-INT", "synlnint"), ("ln-ext", "SynLN-EXT", "synlnext"),
                             ("prostate", "SynProstate", "synprostate")):
        p = PRESETS[name]
        assert (p.name, p.dataset_name, p.prefix) == (name, ds, prefix)
    assert PRESETS["ln-int"].class_names == PRESETS["ln-ext"].class_names == ("benign", "malignant")
    assert PRESETS["prostate"].class_names == ("prostate",) and PRESETS["prostate"].tasks == ("segmentation",)
    assert PRESETS["thyroid"].seed_salt is None and PRESETS["breast"].seed_salt is None
    salts = [PRESETS[n].seed_salt for n in NEW_PRESETS]
    assert None not in salts and len(set(salts)) == len(salts)


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_deterministic_and_typed(preset):
    label = PRESETS[preset].class_names[-1]
    a = render_sample(preset, 5, size=64, label=label)
    b = render_sample(preset, 5, size=64, label=label)
    c = render_sample(preset, 6, size=64, label=label)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.descriptors == b.descriptors and a.caption == b.caption
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == a.mask.shape == (64, 64) and a.image.dtype == a.mask.dtype == np.uint8
    assert set(np.unique(a.mask)) <= {0, 1}
    json.dumps(a.descriptors)
    json.dumps(a.meta)
    assert a.meta["preset"] == preset


def test_same_seed_gives_different_patients_in_the_two_centres():
    # The centres share the label model, so without distinct seed salts a seed draws the same class and the same
    # descriptors in both (only the acquisition differs); the masks differ anyway (other depths), so they prove
    # nothing. With independent draws, equal classes for 40 seeds have probability 2**-40.
    seeds = range(40)
    assert [sample_label("ln-int", s) for s in seeds] != [sample_label("ln-ext", s) for s in seeds]
    for seed in range(5):
        a = render_sample("ln-int", seed, size=48, label="benign")
        b = render_sample("ln-ext", seed, size=48, label="benign")
        assert a.descriptors != b.descriptors, seed


@pytest.mark.parametrize("preset", ["ln-int", "ln-ext"])
@pytest.mark.parametrize("label", ["benign", "malignant"])
def test_lymph_node_masks_non_empty(preset, label):
    for seed in range(3):
        s = render_sample(preset, seed, size=64, label=label)
        assert s.label == label and s.mask.sum() > 10 and s.image.std() > 5
        assert "lymph node" in s.caption


def test_prostate_gland_mask_inside_the_fan():
    for seed in range(3):
        s = render_sample("prostate", seed, size=64)
        assert s.label == "prostate"
        fan = s.image > 0
        assert 0.1 < s.mask.mean() < 0.6  # the gland is large and always present
        assert not (s.mask.astype(bool) & ~ndimage.binary_dilation(fan, iterations=2)).any()
        assert s.image[0, 0] == s.image[0, -1] == 0  # black corners outside the sector
        assert {"pixel_spacing_x_mm", "radius_mm", "span_deg"} <= set(s.meta)
        assert 95 <= s.meta["span_deg"] <= 120 and 20 <= s.meta["f0_mhz"] <= 29


def test_convex_probe_geometry():
    probe = ConvexProbe(name="c", f0_mhz=5.0, depth_mm=40.0, radius_mm=10.0, span_deg=100.0, focus_mm=20.0)
    assert probe.width_mm == pytest.approx(2 * 50 * np.sin(np.deg2rad(50)))
    assert probe.z_top_mm < 0 < probe.depth_mm
    r, theta = probe.to_beam(np.float32(0.0), np.float32(15.0))
    assert r == pytest.approx(15.0) and theta == pytest.approx(0.0)
    grid = make_beam_grid(probe, 64)
    x, z = grid.mesh()
    assert x.shape == z.shape == grid.shape
    iz, ix = grid.beam_index(x, z)
    assert np.allclose(iz, np.arange(grid.shape[0])[:, None], atol=1e-3)
    assert np.allclose(ix, np.arange(grid.shape[1])[None, :], atol=1e-3)
    fan = field_mask(probe, 64)
    assert fan[-1, 32] and not fan[0, 0] and not fan[-1, 0]


def test_centres_share_the_label_model():
    a, b = PRESETS["ln-int"], PRESETS["ln-ext"]
    assert a.sample_descriptors is b.sample_descriptors and a.caption is b.caption
    rng = np.random.default_rng(0)
    draws = {c: [a.sample_descriptors(c, rng) for _ in range(400)] for c in a.class_names}
    hilum_absent = {c: np.mean([d["hilum"] == "absent" for d in draws[c]]) for c in draws}
    round_rate = {c: np.mean([d["ls_ratio"] < 2.0 for d in draws[c]]) for c in draws}
    assert hilum_absent["malignant"] > 0.6 > 0.3 > hilum_absent["benign"]
    assert round_rate["malignant"] > 0.6 > 0.3 > round_rate["benign"]
    for d in draws["benign"] + draws["malignant"]:
        assert (d["cortex"] == "diffuse") == (d["hilum"] == "absent")
        assert d["shape"] == ("round" if d["ls_ratio"] < 2.0 else "oval")


def test_centres_differ_in_acquisition():
    def mid(r: tuple[float, float]) -> float:
        return (r[0] + r[1]) / 2

    assert EXT.f0_mhz[1] <= INT.f0_mhz[0] and EXT.f_number[0] > INT.f_number[1]
    assert EXT.dynamic_range_db[1] < INT.dynamic_range_db[0]
    assert mid(EXT.gain_target) > mid(INT.gain_target) and mid(EXT.tgc_tilt_db) < mid(INT.tgc_tilt_db)
    assert mid(EXT.smoothing_mm) > mid(INT.smoothing_mm) == 0.0


def _image_stats(img: np.ndarray) -> dict[str, float]:
    f = img.astype(np.float32)
    hp = f - ndimage.uniform_filter(f, 7)
    h = f.shape[0]
    return {
        "mean": float(f.mean()),
        "std": float(f.std()),
        "lateral_speckle": float(np.corrcoef(hp[:, 1:].ravel(), hp[:, :-1].ravel())[0, 1]),
        "deep_over_mid": float(f[int(0.8 * h):].mean() / (f[int(0.4 * h):int(0.6 * h)].mean() + 1e-3)),
    }


def test_ext_images_differ_from_int_in_statistics():
    stats = {}
    for preset in ("ln-int", "ln-ext"):
        rows = [_image_stats(render_sample(preset, i, size=96, label=("benign", "malignant")[i % 2]).image)
                for i in range(12)]
        stats[preset] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    a, b = stats["ln-int"], stats["ln-ext"]
    assert b["mean"] > a["mean"] + 4  # brighter display gain
    assert b["std"] > a["std"] + 3  # smaller dynamic range: harsher contrast
    assert b["lateral_speckle"] > a["lateral_speckle"] + 0.1  # coarser speckle (lower f0, higher F#, smoothing)
    assert b["deep_over_mid"] < a["deep_over_mid"] - 0.1  # under-compensated TGC


def test_writer_layout_of_new_presets(tmp_path):
    root = generate_dataset("prostate", tmp_path / "p", profile="tiny", seed=0, size=32)
    assert (root / "segmentation" / "SynProstate" / "train.txt").is_file()
    manifest = json.loads((root / "generator.json").read_text())
    assert manifest["class_names"] == ["prostate"] and manifest["counts"]["train"] == {"prostate": 24}
    root = generate_dataset("ln-ext", tmp_path / "e", profile="tiny", seed=0, size=32)
    assert sorted(p.name for p in (root / "all" / "images").glob("*.png"))[0] == "synlnext_00001.png"
    assert json.loads((root / "generator.json").read_text())["counts"]["train"] == {"benign": 12, "malignant": 12}


# ------------------------------------------------------------------------------------------ cross-centre module


def _module(tmp_path: Path, **kwargs):
    from usvl.data import SyntheticDataModule

    return SyntheticDataModule(preset="ln-int", profile="tiny", generated_size=32, image_size=32, batch_size=4,
                               root=str(tmp_path / "int"), test_root=str(tmp_path / "ext"), **kwargs)


def test_cross_centre_test_split_comes_from_ext(tmp_path, caplog):
    dm = _module(tmp_path, test_preset="ln-ext")
    with caplog.at_level(logging.INFO, logger="usvl.data.sources.synthetic"):
        dm.setup("fit")
        dm.setup("test")
    train, val, test = (dm.datasets[s].names for s in ("train", "val", "test"))
    assert len(train) == 24 and len(val) == 8 and len(test) == 8
    assert all(n.startswith("synlnint_") for n in train + val)
    assert all(n.startswith("synlnext_") for n in test)
    ext_test = (tmp_path / "ext" / "classification" / "SynLN-EXT" / "test.txt").read_text().split()
    assert sorted(test) == sorted(ext_test)
    assert dm.test_origin == {"preset": "ln-ext", "dataset": "SynLN-EXT", "root": str(tmp_path / "ext"),
                              "splits": ["test"], "images": 8}
    assert any("ln-ext" in r.getMessage() and "test" in r.getMessage() for r in caplog.records)
    assert dm.predict_split == "test"


def test_cross_centre_can_test_on_all_of_ext(tmp_path):
    dm = _module(tmp_path, test_preset="ln-ext", test_split="all")
    dm.setup("test")
    assert len(dm.datasets["test"].names) == 40 and dm.test_origin["splits"] == ["train", "val", "test"]
    assert set(dm.manifest.loc[dm.manifest["split"] == "train", "name"].str[:9]) == {"synlnint_"}


def test_a_test_seed_gives_fresh_test_patients_of_the_same_preset(tmp_path):
    from usvl.data import SyntheticDataModule
    from usvl.data.descriptors import SyntheticDescriptorDataModule

    dm = SyntheticDescriptorDataModule(preset="thyroid", profile="tiny", generated_size=32, image_size=32,
                                       batch_size=4, root=str(tmp_path / "a"), test_root=str(tmp_path / "b"),
                                       test_seed=7, test_split="all")
    dm.setup("fit")
    dm.setup("test")
    test = dm.datasets["test"]
    assert len(test) == 40 and dm.test_origin["seed"] == 7 and dm.test_origin["splits"] == ["train", "val", "test"]
    assert all(name.startswith("seed7_synthyroid_") for name in test.names)
    assert not {str(path) for path in dm.manifest.loc[dm.manifest["split"] == "test", "image"]} & {
        str(path) for path in dm.manifest.loc[dm.manifest["split"] != "test", "image"]}
    first = (tmp_path / "a" / "all" / "images" / "synthyroid_00001.png").read_bytes()
    assert (tmp_path / "b" / "all" / "images" / "synthyroid_00001.png").read_bytes() != first  # another scene
    assert all(item["descriptors"]["composition"] for item in (test[0], test[len(test) - 1]))  # found under the prefix
    with pytest.raises(ValueError, match="test_seed other than seed"):
        SyntheticDataModule(preset="thyroid", test_split="all", test_seed=0)


def test_without_test_preset_the_own_test_split_is_used(tmp_path):
    dm = _module(tmp_path)
    dm.setup("test")
    assert all(n.startswith("synlnint_") for n in dm.datasets["test"].names) and dm.test_origin is None


def test_mismatched_presets_and_tasks_are_rejected():
    from usvl.data import SyntheticDataModule

    with pytest.raises(ValueError, match="test_preset"):
        SyntheticDataModule(preset="ln-int", test_preset="breast")
    with pytest.raises(ValueError, match="supports"):
        SyntheticDataModule(preset="prostate", task="classification")
    with pytest.raises(KeyError, match="available"):
        SyntheticDataModule(preset="ln-int", test_preset="nope")


# --------------------------------------------------------------------------------------------------- smoke fits


def test_smoke_fit_ln_cls_tests_on_ext(tmp_path, usvl_cache):
    from usvl.cli import run_lightning

    cli = run_lightning(["fit", *smoke("ln_cls"), "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert cli.datamodule.test_origin["preset"] == "ln-ext"
    assert all(n.startswith("synlnext_") for n in cli.datamodule.datasets["test"].names)
    payload = json.loads((tmp_path / "ln_cls" / "version_0" / "test_metrics.json").read_text())
    assert 0.0 <= payload["metrics"]["test/auroc"] <= 1.0
    assert payload["class_names"] == ["benign", "malignant"]


def test_smoke_fit_prostate_seg(tmp_path, usvl_cache):
    from usvl.cli import run_lightning

    run_lightning(["fit", *smoke("prostate_seg"), "--trainer.logger.init_args.save_dir", str(tmp_path)])
    payload = json.loads((tmp_path / "prostate_seg" / "version_0" / "test_metrics.json").read_text())
    assert 0.0 <= payload["metrics"]["test/dice"] <= 1.0 and payload["metrics"]["test/n_images"] == 8
    assert payload["class_names"] == ["prostate"]
