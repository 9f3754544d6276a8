"""Fast tests of the procedural ultrasound generator and its dataset writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from usvl.data.synthetic import GENERATOR_VERSION, PRESETS, PROFILES, generate_dataset, render_sample
from usvl.data.synthetic.presets.thyroid import sample_descriptors, tirads_category, tirads_points
from usvl.data.synthetic.render import SyntheticSample


def _desc(comp, echo, shape, margin, foci):
    return {
        "composition": comp,
        "echogenicity": echo,
        "shape": shape,
        "margin": margin,
        "echogenic_foci": foci,
    }


def test_public_api():
    assert isinstance(GENERATOR_VERSION, str) and GENERATOR_VERSION
    assert {"thyroid", "breast", "ln-int", "ln-ext", "prostate"} <= set(PRESETS)
    assert PRESETS["thyroid"].class_names == ("benign", "malignant")
    assert PRESETS["breast"].class_names == ("benign", "malignant", "normal")
    assert PROFILES["default"] == {"train": 1000, "val": 200, "test": 500}
    assert PROFILES["small"] == {"train": 300, "val": 100, "test": 200}
    assert PROFILES["tiny"] == {"train": 24, "val": 8, "test": 8}


@pytest.mark.parametrize("preset", ["thyroid", "breast"])
def test_determinism_and_types(preset):
    a = render_sample(preset, 123, size=96)
    b = render_sample(preset, 123, size=96)
    c = render_sample(preset, 124, size=96)
    assert isinstance(a, SyntheticSample)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.descriptors == b.descriptors and a.caption == b.caption and a.label == b.label
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == a.mask.shape == (96, 96)
    assert a.image.dtype == np.uint8 and a.mask.dtype == np.uint8
    assert set(np.unique(a.mask)) <= {0, 1}
    json.dumps(a.descriptors)
    json.dumps(a.meta)
    for key in ("pixel_spacing_mm", "probe", "f0_mhz", "depth_mm", "seed", "generator_version", "preset"):
        assert key in a.meta
    assert a.meta["generator_version"] == GENERATOR_VERSION and a.meta["preset"] == preset


# md5 of image + mask bytes, recorded with numpy 2.4 / scipy 1.17 before the convex probe and the lymph-node and
# prostate presets were added: the thyroid and breast outputs must not change for a given seed (experiments depend
# on them). numpy's Generator streams are not promised stable across numpy versions, hence the version pin.
GOLDEN = {
    ("thyroid", 0, 64, None): "21c6534a949c3a412d9db169cea90b5b",
    ("thyroid", 7, 96, "malignant"): "9e97eb687c21b3108a15e2f8bf911644",
    ("breast", 0, 64, None): "4767a6bb0135a0bc362c6cf885ceb5a6",
    ("breast", 7, 96, "malignant"): "404732a28c85a389bea9eac816cc5007",
}


@pytest.mark.skipif(not np.__version__.startswith("2.4."), reason="golden hashes recorded with numpy 2.4")
@pytest.mark.parametrize("case", sorted(GOLDEN, key=str), ids=lambda c: "-".join(map(str, c)))
def test_thyroid_and_breast_outputs_unchanged(case):
    import hashlib

    preset, seed, size, label = case
    s = render_sample(preset, seed, size=size, label=label)
    assert hashlib.md5(s.image.tobytes() + s.mask.tobytes()).hexdigest() == GOLDEN[case]


@pytest.mark.parametrize(
    ("preset", "label"),
    [("thyroid", "benign"), ("thyroid", "malignant"), ("breast", "benign"), ("breast", "malignant")],
)
def test_lesion_masks_non_empty(preset, label):
    for seed in range(3):
        s = render_sample(preset, seed, size=64, label=label)
        assert s.label == label
        assert s.mask.sum() > 10
        assert s.image.std() > 5


def test_breast_normal_has_empty_mask():
    for seed in range(3):
        s = render_sample("breast", seed, size=64, label="normal")
        assert s.mask.sum() == 0
        assert s.descriptors == {"finding": "none"}
        assert "Normal" in s.caption


def test_unknown_label_rejected():
    with pytest.raises(ValueError):
        render_sample("thyroid", 0, size=32, label="normal")


@pytest.mark.parametrize(
    ("desc", "points", "category"),
    [
        (_desc("cystic", "anechoic", "wider_than_tall", "smooth", "none"), 0, "TR1"),
        (_desc("spongiform", "isoechoic", "wider_than_tall", "smooth", "comet_tail"), 0, "TR1"),
        (_desc("mixed", "isoechoic", "wider_than_tall", "smooth", "none"), 2, "TR2"),
        (_desc("solid", "isoechoic", "wider_than_tall", "ill_defined", "comet_tail"), 3, "TR3"),
        (_desc("solid", "hypoechoic", "wider_than_tall", "smooth", "none"), 4, "TR4"),
        (
            _desc("mixed", "hypoechoic", "wider_than_tall", "lobulated_irregular", "macrocalcification"),
            6,
            "TR4",
        ),
        (_desc("solid", "hypoechoic", "wider_than_tall", "smooth", "punctate"), 7, "TR5"),
        (
            _desc("solid", "very_hypoechoic", "taller_than_wide", "extrathyroidal_extension", "punctate"),
            14,
            "TR5",
        ),
        (_desc("solid", "hypoechoic", "wider_than_tall", "smooth", ["macrocalcification", "rim"]), 7, "TR5"),
    ],
)
def test_tirads_points_and_category(desc, points, category):
    assert tirads_points(desc) == points
    assert tirads_category(points) == category


def test_tirads_category_bounds():
    assert [tirads_category(p) for p in range(0, 9)] == [
        "TR1",
        "TR1",
        "TR2",
        "TR3",
        "TR4",
        "TR4",
        "TR4",
        "TR5",
        "TR5",
    ]


def test_sampled_descriptors_are_coherent():
    rng = np.random.default_rng(0)
    for i in range(300):
        d = sample_descriptors(("benign", "malignant")[i % 2], rng)
        assert d["tirads_points"] == tirads_points(d)
        assert d["tirads_category"] == tirads_category(d["tirads_points"])
        if d["composition"] == "cystic":
            assert d["echogenicity"] == "anechoic"


def _read_lines(p: Path) -> list[str]:
    return [ln for ln in p.read_text().splitlines() if ln]


@pytest.mark.parametrize(
    ("preset", "prefix", "ds"), [("thyroid", "synthyroid", "SynThyroid"), ("breast", "synbusi", "SynBUSI")]
)
def test_writer_layout(tmp_path, preset, prefix, ds):
    root = generate_dataset(preset, tmp_path / "data", profile="tiny", seed=3, size=48)
    assert root == tmp_path / "data"
    images = sorted(p.name for p in (root / "all" / "images").glob("*.png"))
    masks = sorted(p.name for p in (root / "all" / "masks").glob("*.png"))
    assert len(images) == 40 and images == masks
    assert images[0] == f"{prefix}_00001.png"
    im = Image.open(root / "all" / "images" / images[0])
    assert im.mode == "L" and im.size == (48, 48)
    assert set(np.unique(np.asarray(Image.open(root / "all" / "masks" / images[0])))) <= {0, 255}
    rows = _read_lines(root / "classification" / ds / "labels.csv")
    assert len(rows) == 40 and all(r.count(",") == 1 for r in rows)
    assert rows[0].split(",")[0].endswith(".png")  # headerless
    labels = {r.split(",")[0]: int(r.split(",")[1]) for r in rows}
    n_classes = len(PRESETS[preset].class_names)
    assert set(labels.values()) == set(range(n_classes))
    splits = {s: _read_lines(root / "classification" / ds / f"{s}.txt") for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in splits.items()} == PROFILES["tiny"]
    all_names = splits["train"] + splits["val"] + splits["test"]
    assert len(set(all_names)) == 40 and set(all_names) == set(images)
    for s in splits:
        assert _read_lines(root / "segmentation" / ds / f"{s}.txt") == splits[s]
    meta = [json.loads(ln) for ln in _read_lines(root / "metadata.jsonl")]
    assert len(meta) == 40
    for m in meta:
        assert labels[m["name"]] == m["label_index"]
        assert m["name"] in splits[m["split"]]
        for key in (
            "descriptors",
            "caption",
            "seed",
            "generator_version",
            "preset",
            "pixel_spacing_mm",
            "probe",
            "f0_mhz",
            "depth_mm",
            "label",
        ):
            assert key in m
    manifest = json.loads((root / "generator.json").read_text())
    assert manifest["dataset_name"] == ds and manifest["generator_version"] == GENERATOR_VERSION
    assert sum(sum(v.values()) for v in manifest["counts"].values()) == 40
    # Balanced classes per split: train of the tiny profile follows the class proportions.
    if preset == "thyroid":
        assert manifest["counts"]["train"] == {"benign": 12, "malignant": 12}
    else:
        assert all(manifest["counts"][s]["normal"] > 0 for s in ("train", "val", "test"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_writer_deterministic_across_workers(tmp_path):
    a = generate_dataset("breast", tmp_path / "a", profile="tiny", seed=1, size=32, workers=1)
    b = generate_dataset("breast", tmp_path / "b", profile="tiny", seed=1, size=32, workers=2)
    assert (a / "metadata.jsonl").read_text() == (b / "metadata.jsonl").read_text()
    for name in ("synbusi_00001.png", "synbusi_00040.png"):
        assert np.array_equal(
            np.asarray(Image.open(a / "all/images" / name)), np.asarray(Image.open(b / "all/images" / name))
        )


def test_writer_atomic_on_failure(tmp_path, monkeypatch):
    import usvl.data.synthetic.writer as writer

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(writer, "_write_manifest", boom)
    with pytest.raises(RuntimeError):
        generate_dataset("thyroid", tmp_path / "data", profile="tiny", size=32)
    assert not (tmp_path / "data").exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_non_empty_root(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        generate_dataset("thyroid", tmp_path / "data", profile="tiny", size=32)
