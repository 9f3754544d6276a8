import shutil

import pytest
import torch
from PIL import Image

from usvl.data import BatchAugment, DatasetNotFoundError, NextGenDataModule, SyntheticDataModule
from usvl.data.decode import load_image, load_mask
from usvl.data.sources.nextgen import read_nextgen_manifest


def test_synthetic_module_knows_its_classes_before_generating():
    module = SyntheticDataModule(preset="thyroid", profile="tiny")
    assert module.class_names == ["benign", "malignant"] and module.num_classes == 2
    with pytest.raises(KeyError, match="thyroid"):
        SyntheticDataModule(preset="liver")


def test_generation_is_logged_once_then_reused(usvl_cache, caplog):
    import logging

    from usvl.data.sources.synthetic import ensure_synthetic

    with caplog.at_level(logging.INFO, logger="usvl.data.sources.synthetic"):
        first = ensure_synthetic("thyroid", "tiny", seed=0, size=256, workers=1)
        second = ensure_synthetic("thyroid", "tiny", seed=0, size=256, workers=1)
    assert first == second
    assert "Reusing synthetic thyroid data" in caplog.text


def test_nextgen_manifest_of_generated_data(tiny_thyroid):
    manifest = read_nextgen_manifest(tiny_thyroid, "SynThyroid", "classification")
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert set(manifest["label"]) == {0, 1}
    assert manifest["mask"].notna().all()
    names = {split: set(rows["name"]) for split, rows in manifest.groupby("split")}
    assert not names["train"] & names["test"] and not names["train"] & names["val"]


def test_datamodule_batches(tiny_thyroid):
    module = NextGenDataModule(root=str(tiny_thyroid), dataset="SynThyroid", image_size=48, batch_size=4)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 1, 48, 48)
    assert batch["label"].dtype == torch.long and len(batch["name"]) == 4
    assert module.split_counts()["train"] == {"benign": 12, "malignant": 12}


def test_missing_dataset_folder_says_where_to_put_it(tmp_path):
    module = NextGenDataModule(root=str(tmp_path / "nowhere"), dataset="BUSI")
    with pytest.raises(DatasetNotFoundError, match="NextGen-UIA"):
        module.setup("fit")


def test_unknown_label_is_reported_by_name(tiny_thyroid, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_thyroid, root)
    labels = root / "classification" / "SynThyroid" / "labels.csv"
    rows = labels.read_text().splitlines()
    name = rows[0].split(",")[0]
    labels.write_text("\n".join([f"{name},7"] + rows[1:]) + "\n")
    module = NextGenDataModule(root=str(root), dataset="SynThyroid")
    with pytest.raises(ValueError, match=name):
        module.setup("fit")


def test_corrupt_image_error_names_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(str(path), 32)


def test_masks_are_binarised_from_grey_and_rgba(tmp_path):
    grey = tmp_path / "m.png"
    Image.new("L", (10, 10), 200).save(grey)
    rgba = tmp_path / "m_rgba.png"
    Image.new("RGBA", (10, 10), (0, 0, 0, 255)).save(rgba)
    assert load_mask(str(grey), 8).max() == 1
    assert load_mask(str(rgba), 8).max() == 0


def test_batch_augment_keeps_masks_binary_and_aligned():
    torch.manual_seed(0)
    image = torch.zeros(3, 1, 32, 32, dtype=torch.uint8)
    image[:, :, 8:24, 8:24] = 255
    mask = (image > 0).to(torch.uint8)
    out, out_mask = BatchAugment(brightness=0, contrast=0, gamma=0)(image, mask)
    assert out.shape == image.shape and out_mask.shape == mask.shape
    assert set(out_mask.unique().tolist()) <= {0, 1}
    bright = out > 127
    assert (bright == out_mask.bool()).float().mean() > 0.95
