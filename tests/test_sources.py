"""Dataset source readers on miniature copies of the real layouts (tests/layouts.py), and each paper config on them."""

from pathlib import Path

import layouts
import numpy as np
import pytest
from PIL import Image

from usvl.data.sources import (
    MANIFEST_COLUMNS,
    SOURCES,
    BUSIDataModule,
    DatasetNotFoundError,
    ProstateDataModule,
    read_busi_manifest,
    read_ddti_manifest,
    read_folder_manifest,
    read_nextgen_manifest,
    read_prostate_manifest,
    read_source,
    read_tn3k_manifest,
)

REPO = Path(__file__).resolve().parents[1]

WRITERS = {
    "busi": (layouts.write_busi, "busi", {}),
    "tn3k": (layouts.write_tn3k, "tn3k", {}),
    "ddti": (layouts.write_ddti, "ddti", {}),
    "ddti_xml": (layouts.write_ddti_xml, "ddti", {"version": "original"}),
    "prostate": (layouts.write_prostate, "prostate", {}),
    "nextgen": (layouts.write_nextgen, "nextgen", {"dataset": "BUSI", "class_names": ["benign", "malignant"]}),
    "folder": (layouts.write_folder, "folder", {"class_names": ["benign", "malignant"]}),
}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    """Torch threads as the ``usvl`` command sets them (``USVL_THREADS``); oversubscribed threads crawl."""
    import torch

    from usvl.utils.threads import configure_threads

    before = torch.get_num_threads()
    configure_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
    """Every layout written once with its planted problems: ``{key: (root, problems)}``."""
    base = tmp_path_factory.mktemp("quirky")
    return {key: writer(base / key, quirks=True) for key, (writer, _, _) in WRITERS.items()}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Every layout written once without problems."""
    base = tmp_path_factory.mktemp("clean")
    return {key: writer(base / key)[0] for key, (writer, _, _) in WRITERS.items()}


def _mask(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 127


def _check_contract(manifest):
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert manifest["name"].is_unique and manifest["label"].dtype == np.int64
    for column in ("image", "mask", "split", "patient", "label_name"):
        assert all(v is None or isinstance(v, str) for v in manifest[column]), column
    assert all(Path(p).is_absolute() for p in manifest["image"])
    assert set(manifest["split"].dropna()) <= {"train", "val", "test"}


@pytest.mark.parametrize("key", list(WRITERS))
def test_every_planted_problem_is_named_in_the_manifest(key, quirky):
    root, problems = quirky[key]
    _, source, options = WRITERS[key]
    manifest = read_source(source, root, **options)
    _check_contract(manifest)
    assert problems and set(problems) <= set(layouts.PROBLEM_KINDS)
    known = set(manifest["name"]) | set(manifest["patient"].dropna())
    for kind, names in problems.items():
        for name in names:
            assert name in known or any(n.endswith(f"/{name}") for n in manifest["name"]), (kind, name)
    assert any(layouts.NON_ASCII in n for n in manifest["name"])


def test_busi_classes_merged_masks_and_quirks(quirky, usvl_cache):
    root, problems = quirky["busi"]
    manifest = read_busi_manifest(root).set_index("name")
    assert manifest.groupby("label_name").size().to_dict() == {"benign": 9, "malignant": 7, "normal": 4}
    assert manifest["split"].isna().all() and manifest["patient"].isna().all()
    assert manifest.loc["benign/benign (5).png", "mask"] is None
    assert manifest.loc["normal/normal (1).png", "label"] == 2 and not _mask(manifest.loc["normal/normal (1).png",
                                                                                          "mask"]).any()
    folder = Path(root) / "Dataset_BUSI_with_GT" / "benign"
    merged = Path(manifest.loc["benign/benign (2).png", "mask"])
    assert merged.is_relative_to(usvl_cache / "derived" / "busi")
    parts = [_mask(folder / f"benign (2)_mask{suffix}.png") for suffix in ("", "_1", "_2")]
    assert np.array_equal(_mask(merged), parts[0] | parts[1] | parts[2])
    assert _mask(merged).sum() > parts[0].sum()
    # RGB / RGBA masks are binarised like grey ones
    assert _mask(manifest.loc["malignant/malignant (3).png", "mask"]).any()
    # the folder itself works as root; normals can be left out
    binary = read_busi_manifest(Path(root) / "Dataset_BUSI_with_GT", include_normal=False)
    assert set(binary["label"]) == {0, 1} and len(binary) == 16
    assert BUSIDataModule(root=str(root), include_normal=False).class_names == ["benign", "malignant"]


@pytest.mark.parametrize("mode, pixels", [
    ("L", [[0, 1]]), ("L", [[0, 255]]), ("L", [[0, 200]]), ("RGB", [[[0, 0, 0], [200, 0, 0]]]),
    ("RGBA", [[[0, 0, 0, 255], [255, 255, 255, 255]]]), ("RGBA", [[[0, 0, 0, 0], [0, 0, 0, 255]]]),
])
def test_merged_masks_binarise_like_the_loader(mode, pixels, tmp_path):
    from usvl.data.decode import read_binary_mask

    Image.fromarray(np.array(pixels, dtype=np.uint8), mode).save(tmp_path / "m.png")
    assert read_binary_mask(tmp_path / "m.png").tolist() == [[False, True]]


def test_tn3k_folds_labels_and_test_split(quirky, tmp_path):
    root, _ = quirky["tn3k"]
    manifest = read_tn3k_manifest(root, fold=0).set_index("name")
    assert manifest.groupby("split").size().to_dict() == {"train": 9, "val": 3, "test": 7}
    assert manifest.loc["trainval-image/0009.jpg", "split"] == "val"
    assert read_tn3k_manifest(root, fold=1).set_index("name").loc["trainval-image/0000.jpg", "split"] == "val"
    assert manifest.loc["trainval-image/0002.jpg", ["label", "label_name"]].tolist() == [-1, "7"]
    assert manifest.loc["trainval-image/0003.jpg", "label"] == 1 and manifest.loc["test-image/0001.jpg", "mask"] is None
    assert manifest.loc["test-image/0003.png", "label"] == 1  # label row keyed 0003.jpg, file re-saved as PNG
    open_split = read_tn3k_manifest(root, fold=None)
    assert open_split[open_split["name"].str.startswith("trainval")]["split"].isna().all()
    with pytest.raises(DatasetNotFoundError, match="fold7"):
        read_tn3k_manifest(root, fold=7)
    bad = Path(root) / "tn3k" / "tn3k-trainval-fold3.json"
    bad.write_text('{"train": [0, 1],\n "val": [2, }')
    with pytest.raises(ValueError, match=r"fold3\.json:2"):
        read_tn3k_manifest(root, fold=3)


def test_ddti_processed_release(quirky):
    root, _ = quirky["ddti"]
    manifest = read_ddti_manifest(root).set_index("name")
    assert len(manifest) == 16 and (manifest["label"] == -1).all() and manifest["split"].isna().all()
    assert manifest.loc["0002.PNG", "mask"] is None and manifest.loc["0003.PNG", "mask"].endswith("0003.PNG")
    with pytest.raises(DatasetNotFoundError, match="cimalab"):
        read_ddti_manifest(Path(root) / "DDTI" / "1_or_data" / "image")


def test_ddti_xml_polygons_tirads_and_cases(quirky, usvl_cache):
    root, _ = quirky["ddti_xml"]
    manifest = read_ddti_manifest(root, version="original").set_index("name")
    assert manifest.loc["2_1.jpg", "patient"] == manifest.loc["2_2.jpg", "patient"] == "2"
    assert manifest.loc["1_1.jpg", ["label", "label_name"]].tolist() == [0, "2"]
    assert manifest.loc["3_1.jpg", "label"] == 1
    assert manifest.loc["5_1.jpg", ["label", "label_name"]].tolist() == [1, "4c"]
    assert manifest.loc["4_1.jpg", ["label", "label_name"]].tolist() == [-1, "4d"]
    assert manifest.loc["6_1.jpg", "mask"] is None
    rendered = Path(manifest.loc["2_1.jpg", "mask"])
    assert rendered.is_relative_to(usvl_cache / "derived" / "ddti")
    _, truth = layouts.lesion(3000 + 10 * 2 + 1, "benign")
    overlap = (_mask(rendered) & truth).sum() / (_mask(rendered) | truth).sum()
    assert overlap > 0.8
    two_nodules = _mask(manifest.loc["1_1.jpg", "mask"])
    assert two_nodules[9, 9] and two_nodules.sum() > layouts.lesion(3011, "benign")[1].sum()
    broken = Path(root) / "DDTI" / "4.xml"
    broken.write_text("<case>\n<number>4</number>\n<tirads>4d</tirads\n</case>")
    with pytest.raises(ValueError, match=r"4\.xml:\d+: cannot parse"):
        read_ddti_manifest(root, version="original")


def test_prostate_slices_split_by_patient_and_reused(quirky):
    root, _ = quirky["prostate"]
    manifest = read_prostate_manifest(root)
    test = manifest[manifest["split"] == "test"]
    assert set(test["patient"]) == {"microUS_test_01", "microUS_test_02"} and len(test) == 8
    assert manifest[manifest["split"].isna()]["patient"].nunique() == 5  # 4 train scans + the non-ASCII one
    assert not set(test["patient"]) & set(manifest[manifest["split"].isna()]["patient"])
    assert test[test["patient"] == "microUS_test_02"]["mask"].isna().all()
    broken = manifest[manifest["name"] == "train/microUS_train_04"]
    assert len(broken) == 1 and broken["image"].iloc[0].endswith(".nii.gz") and broken["mask"].iloc[0] is None
    row = manifest[manifest["name"] == "train/microUS_train_02/002"].iloc[0]
    image, mask = Image.open(row["image"]), _mask(row["mask"])
    assert image.size == (32, 24) and mask.shape == (24, 32) and mask.any()
    assert Image.open(manifest[manifest["patient"] == "microUS_train_01"]["mask"].iloc[0]).size == (28, 24)
    stamp = Path(row["image"]).stat().st_mtime_ns
    again = read_prostate_manifest(root)
    assert again.equals(manifest) and Path(row["image"]).stat().st_mtime_ns == stamp
    non_expert = read_prostate_manifest(root, annotation="non_expert", slice_step=2)
    assert len(non_expert[non_expert["split"] == "test"]) == 4
    assert ProstateDataModule(root=str(root)).class_names == ["prostate"]


def test_nextgen_keeps_missing_files_and_unknown_labels(quirky):
    root, _ = quirky["nextgen"]
    (Path(root) / "all" / "images" / "case_009.png").unlink()
    manifest = read_nextgen_manifest(root, "BUSI", "classification", ["benign", "malignant"]).set_index("name")
    assert not Path(manifest.loc["case_009.png", "image"]).exists()
    assert manifest.loc["case_002.png", ["label", "label_name"]].tolist() == [-1, "7"]
    assert read_nextgen_manifest(root, "BUSI").set_index("name").loc["case_002.png", "label"] == 7
    assert manifest.loc["case_003.png", "mask"] is None
    with pytest.raises(DatasetNotFoundError, match="jinggqu/NextGen-UIA"):
        read_nextgen_manifest(root, "LN-EXT")


def test_folder_labels_csv_and_csv_manifest(quirky, tmp_path):
    root, _ = quirky["folder"]
    manifest = read_folder_manifest(root, class_names=["benign", "malignant"]).set_index("name")
    assert manifest.loc["case_001.png", ["label", "label_name", "split", "patient"]].tolist() == [
        1, "malignant", "train", "p00"]
    assert manifest.loc["case_002.png", ["label", "label_name"]].tolist() == [-1, "indeterminate"]
    assert manifest.loc["case_003.png", "mask"] is None
    csv_file = tmp_path / "manifest.csv"
    csv_file.write_text("image,mask,label,split,patient\n"
                        f"{root}/images/case_008.png,{root}/masks/case_008.png,0,,p1\n"
                        "../nowhere/ghost.png,,malignant,test,p2\n", encoding="utf-8")
    listed = read_folder_manifest(csv_file, class_names=["benign", "malignant"])
    assert listed["label"].tolist() == [0, 1] and listed["split"].tolist() == [None, "test"]
    assert listed["mask"].iloc[1] is None and not Path(listed["image"].iloc[1]).exists()
    csv_file.write_text("image,split\na.png,train\nb.png,holdout\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"manifest\.csv:3"):
        read_folder_manifest(csv_file)
    (tmp_path / "nolabels.csv").write_text("picture\nx.png\n")
    with pytest.raises(ValueError, match=r"nolabels\.csv:1: .*no image column"):
        read_folder_manifest(tmp_path / "nolabels.csv")


def test_registry_names_options_and_conversion(quirky):
    assert set(SOURCES) == {"busi", "tn3k", "ddti", "prostate", "nextgen", "folder"}
    with pytest.raises(KeyError, match="busi"):
        read_source("kvasir", "/nowhere")
    with pytest.raises(TypeError, match="include_normal"):
        read_source("busi", quirky["busi"][0], normals="no")
    assert len(read_source("busi", quirky["busi"][0], include_normal="false")) == 16
    assert set(read_source("tn3k", quirky["tn3k"][0], fold="none")["split"].dropna()) == {"test"}
    names = read_source("folder", quirky["folder"][0], class_names="benign,malignant")
    assert (names["label"] >= 0).sum() == len(names) - 1


@pytest.mark.parametrize("source, published", [
    ("busi", "scholar.cu.edu.eg"), ("tn3k", "haifangong/TRFE-Net"), ("ddti", "cimalab.intec.co"),
    ("prostate", "10.5281/zenodo.10475293"), ("nextgen", "jinggqu/NextGen-UIA"), ("folder", "images/"),
])
def test_missing_data_says_where_to_put_it_and_where_it_is_published(source, published, tmp_path):
    options = {"dataset": "BUSI"} if source == "nextgen" else {}
    with pytest.raises(DatasetNotFoundError, match=published.replace(".", r"\.")) as error:
        read_source(source, tmp_path / "absent", **options)
    assert str(tmp_path / "absent") in str(error.value)


FITS = {
    # config, fixture key, overrides
    "busi_cls": ("busi", []),
    "busi_seg": ("busi", []),
    "tn3k_cls": ("tn3k", []),
    "tn3k_seg": ("tn3k", []),
    "ddti_seg": ("ddti", []),
    "ddti_lexicon": ("ddti_xml", []),
    "prostate_seg": ("prostate", []),
    "nextgen_cls": ("nextgen", []),
    "ln_int_cls": ("folder", []),
}


def test_every_paper_source_config_is_fitted():
    assert set(FITS) == {p.stem for p in (REPO / "configs" / "datasets").glob("*.yaml")}


@pytest.mark.parametrize("config", list(FITS))
def test_paper_config_fits_on_the_miniature_layout(config, clean, tmp_path):
    from usvl.cli import run_lightning

    path = REPO / "configs" / "datasets" / f"{config}.yaml"
    key, overrides = FITS[config]
    # `--data.root` as a user types it (the long form is --data.init_args.root)
    cli = run_lightning(["fit", "--config", str(path), "--data.root", str(clean[key]),
                         "--data.init_args.image_size", "64", "--data.init_args.batch_size", "4",
                         "--data.init_args.eval_batch_size", "4", "--trainer.fast_dev_run", "true",
                         "--trainer.logger.init_args.save_dir", str(tmp_path), *overrides])
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert cli.model.class_names == cli.datamodule.class_names
    assert set(cli.datamodule.manifest["split"]) == {"train", "val", "test"}


@pytest.mark.parametrize("config", sorted(p.stem for p in (REPO / "configs" / "datasets").glob("*.yaml")))
def test_paper_config_without_its_data_names_where_to_put_it(config, monkeypatch, tmp_path):
    import importlib

    import yaml

    monkeypatch.chdir(tmp_path)  # the configs' placeholder roots (data/...) are relative
    data = yaml.safe_load((REPO / "configs" / "datasets" / f"{config}.yaml").read_text())["data"]
    module, _, name = data["class_path"].rpartition(".")
    init = {k: v for k, v in data["init_args"].items() if k != "augment"}
    assert init["root"].startswith("data/")
    datamodule = getattr(importlib.import_module(module), name)(**init)
    where = r"images/" if name == "FolderDataModule" else r"published at"
    with pytest.raises(DatasetNotFoundError, match=rf"data/.*{where}"):
        datamodule.setup("fit")
