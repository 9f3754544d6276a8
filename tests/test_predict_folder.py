"""``usvl predict`` on a folder of new images of mixed size and format, with neither labels nor masks.

The session's smoke fits of ``configs/breast_seg.yaml`` and ``configs/thyroid_cls.yaml`` (tests/smoke_runs.py), then
``usvl predict --config <run>/config.yaml --ckpt_path <ckpt> --data usvl.data.FolderDataModule --data.root
<folder>``: one mask at the image's original size (segmentation), one overlay and one CSV row per image; nothing
overwritten; predictions streamed (no images or predictions kept in memory). The classification fit also stores its
calibration (temperature and threshold fitted on validation) in the best checkpoint, its test reports the calibration
metrics, and predict writes calibrated probabilities and the class at the stored threshold.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from usvl.callbacks import (
    PredictionWriter,
    SegmentationPredictionWriter,
    draw_overlay,
    mask_at_size,
    store_calibration,
)
from usvl.cli import run_lightning
from usvl.data import FolderDataModule
from usvl.data.bad_files import BadFilesError
from usvl.data.dataset import StreamingImageDataset

SIZES = {"a.png": (300, 200), "b.jpg": (97, 131), "c.jpeg": (640, 480), "d.png": (64, 64), "e.jpg": (512, 300),
         "f.png": (150, 400)}
"""The new images: name -> (width, height); PNG and JPEG, grey and colour, no labels, no masks."""


@pytest.fixture(scope="module")
def new_images(tmp_path_factory) -> Path:
    """A folder with ``images/`` only: six mixed-size PNG and JPEG images."""
    root = tmp_path_factory.mktemp("new")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for index, (name, (width, height)) in enumerate(SIZES.items()):
        pixels = rng.integers(0, 255, (height, width), dtype=np.uint8)
        Image.fromarray(pixels).convert("RGB" if index % 2 else "L").save(root / "images" / name)
    return root


@pytest.fixture(scope="module")
def seg_run(breast_seg_fit):
    """The session's smoke fit of ``configs/breast_seg.yaml``: its run config and best checkpoint."""
    return breast_seg_fit.config, breast_seg_fit.checkpoint


@pytest.fixture(scope="module")
def cls_run(thyroid_cls_fit):
    """The session's smoke fit of ``configs/thyroid_cls.yaml``: its run config and best checkpoint."""
    return thyroid_cls_fit.config, thyroid_cls_fit.checkpoint


def predict(run: tuple[Path, Path], folder: Path, out: Path):
    config, checkpoint = run
    return run_lightning(["predict", "--config", str(config), "--ckpt_path", str(checkpoint), "--data",
                          "usvl.data.FolderDataModule", "--data.root", str(folder),
                          "--trainer.logger.init_args.save_dir", str(out)])


def prediction_folders(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("predictions*") if p.is_dir())


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def read_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_segmentation_predict_writes_masks_at_original_size_overlays_and_rows(seg_run, new_images, tmp_path):
    cli = predict(seg_run, new_images, tmp_path)
    assert cli.trainer.predict_loop.predictions == []  # nothing kept in memory: the writer wrote every batch
    assert isinstance(cli.datamodule.predict_dataset, StreamingImageDataset)
    (folder,) = prediction_folders(tmp_path)
    rows = read_rows(folder)
    assert sorted(row["name"] for row in rows) == sorted(SIZES)
    for row in rows:
        width, height = SIZES[row["name"]]
        assert (int(row["width"]), int(row["height"])) == (width, height)
        mask = Image.open(folder / row["mask"])
        assert mask.size == (width, height)
        values = np.asarray(mask)
        assert set(np.unique(values)) <= {0, 255}
        assert int(row["lesion_area_px"]) == int((values > 0).sum())
        assert row["prediction"] == ("lesion" if int(row["lesion_area_px"]) else "no lesion")
        assert 0.0 <= float(row["p_lesion"]) <= 1.0
        assert row["lesion_area_mm2"] == ""  # no pixel spacing given
        assert Image.open(folder / row["overlay"]).size == (width, height)
    assert len(list(folder.glob("*.png"))) == len(SIZES) == len(list((folder / "overlays").glob("*.png")))

    first = files(folder)
    predict(seg_run, new_images, tmp_path)
    assert len(prediction_folders(tmp_path)) == 2
    assert files(folder) == first


def test_classification_predict_writes_calibrated_rows_at_the_stored_threshold_with_the_checkpoint_classes(
        cls_run, new_images, tmp_path):
    config, checkpoint = cls_run
    changed = tmp_path / "changed.ckpt"  # the run's checkpoint with a sharp temperature and a threshold none reaches
    shutil.copy(checkpoint, changed)
    record = {**torch.load(changed, map_location="cpu", weights_only=False)["usvl"]["calibration"],
              "temperature": 0.001, "threshold": 1.5}
    store_calibration(changed, record)
    predict((config, changed), new_images, tmp_path / "out")
    (folder,) = prediction_folders(tmp_path / "out")
    header = (folder / "predictions.csv").read_text().splitlines()[0]
    assert header == "name,p_benign,p_malignant,prediction,threshold"
    assert json.loads((folder / "calibration.json").read_text()) == record
    rows = read_rows(folder)
    assert sorted(row["name"] for row in rows) == sorted(SIZES)
    for row in rows:
        assert row["prediction"] == "benign" and row["threshold"] == "1.500000"  # the stored threshold decides
        assert float(row["p_benign"]) + float(row["p_malignant"]) == pytest.approx(1.0, abs=1e-5)
        overlay = Image.open(folder / "overlays" / f"{Path(row['name']).stem}.png")
        assert overlay.size == SIZES[row["name"]]
    p_malignant = [float(row["p_malignant"]) for row in rows]
    assert all(p < 1e-3 or p > 1 - 1e-3 for p in p_malignant)  # calibrated: T = 0.001 saturates p ~ 0.5-0.7
    assert any(p > 0.5 for p in p_malignant)  # so the argmax would have said malignant for some


def test_fit_stores_the_calibration_in_the_best_checkpoint_and_the_test_reports_it(cls_run):
    config, checkpoint = cls_run
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False)["usvl"]["calibration"]
    assert stored["temperature"] > 0 and 0 < stored["threshold"] < 1 and stored["threshold_method"] == "youden"
    assert stored["checkpoint"] == checkpoint.name and stored["validation_images"] > 0
    report = json.loads((config.parent / "test_metrics.json").read_text())
    assert report["calibration"] == stored
    names = {"accuracy", "auroc", "f1", "sensitivity", "specificity", "loss", "ece", "brier", "ece_uncalibrated",
             "brier_uncalibrated", "nll_calibrated", "accuracy_at_threshold", "sensitivity_at_threshold",
             "specificity_at_threshold", "ood_fraction"}
    assert set(report["metrics"]) == {f"test/{name}" for name in names}
    assert Image.open(config.parent / "reliability.png").size[0] > 300


def test_predict_needs_no_masks_and_no_labels(new_images):
    data = FolderDataModule(root=str(new_images), task="segmentation", image_size=32, batch_size=4,
                            decode_cache=False)
    with pytest.raises(BadFilesError, match="no mask"):
        data.setup("test")
    for task in ("segmentation", "classification"):
        data = FolderDataModule(root=str(new_images), task=task, image_size=32, batch_size=4, decode_cache=False)
        data.setup("predict")
        batches = list(data.predict_dataloader())
        assert sum(len(batch["name"]) for batch in batches) == len(SIZES)
        batch = batches[0]
        assert batch["image"].shape[1:] == (1, 32, 32) and batch["image"].dtype == torch.uint8
        for name, path, (height, width) in zip(batch["name"], batch["path"], batch["original_size"].tolist(),
                                               strict=True):
            assert Path(path).name == name and (width, height) == SIZES[name]
        assert "mask" not in batch and (batch["label"] == -1).all()


def test_streaming_dataset_skips_or_names_a_bad_file(new_images, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    manifest = FolderDataModule(root=str(new_images)).read_manifest()
    manifest = pd.concat([manifest, manifest.head(1).assign(name="broken.png", image=str(bad))], ignore_index=True)
    with pytest.raises(ValueError, match="broken.png"):
        list(StreamingImageDataset(manifest, 16))
    kept = [item["name"] for item in StreamingImageDataset(manifest, 16, on_bad_file="skip")]
    assert kept == sorted(SIZES)


def test_streamed_batches_match_the_loader_length_with_several_workers(tmp_path):
    # Lightning runs len(loader) = ceil(rows / batch) predict batches; every row must be in one of them.
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(20):
        Image.fromarray(np.full((24, 30), index * 10, dtype=np.uint8)).save(folder / f"img{index:02d}.png")
    manifest = FolderDataModule(root=str(tmp_path)).read_manifest()
    loader = torch.utils.data.DataLoader(StreamingImageDataset(manifest, 16, block_size=8), batch_size=8,
                                         num_workers=2)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert sorted(name for batch in batches for name in batch["name"]) == sorted(manifest["name"])


def test_mask_is_resized_from_the_probabilities_not_the_binary_mask():
    probability = torch.zeros(1, 4, 4)
    probability[0, 1:3, 1:3] = 0.6  # a blob: resized probabilities are smooth, so the mask is rounded
    mask = mask_at_size(probability, (40, 80), threshold=0.5)
    assert mask.shape == (40, 80)
    nearest = np.kron(probability[0].numpy() > 0.5, np.ones((10, 20), dtype=bool))
    assert 0 < mask.sum() < nearest.sum()  # bilinear probabilities at 0.6 barely pass 0.5 off the blob's centre
    assert mask[20, 40] and not mask[0, 0]


def test_overlay_draws_the_contour_and_keeps_the_size():
    image = Image.new("RGB", (120, 90), (90, 90, 90))
    mask = np.zeros((90, 120), dtype=bool)
    mask[30:60, 40:80] = True
    overlay = np.asarray(draw_overlay(image, "lesion p=0.90", mask))
    assert overlay.shape == (90, 120, 3)
    assert tuple(overlay[30, 60]) == (255, 40, 40)  # on the contour
    assert tuple(overlay[45, 60]) == (90, 90, 90)  # inside, untouched


def test_writer_reports_the_area_in_mm2_with_a_pixel_spacing(new_images, tmp_path):
    writer = SegmentationPredictionWriter(output_dir=str(tmp_path), pixel_spacing_mm=0.1)
    module = SimpleNamespace(threshold=0.5)
    writer.on_predict_start(SimpleNamespace(log_dir=None), module)
    probability = torch.ones(2, 1, 8, 8)
    names = ["a.png", "a.jpg"]  # one stem: the second mask and overlay get fresh names
    batch = {"path": [str(new_images / "images" / "a.png")] * 2, "original_size": torch.tensor([[20, 30]] * 2)}
    writer.write_on_batch_end(None, module, {"name": names, "probability": probability}, None, batch, 0, 0)
    writer.on_predict_end(None, module)
    rows = read_rows(tmp_path / "predictions")
    assert [row["lesion_area_px"] for row in rows] == ["600", "600"]
    assert [row["lesion_area_mm2"] for row in rows] == ["6.000", "6.000"]
    assert [row["mask"] for row in rows] == ["a.png", "a-1.png"]
    assert [row["overlay"] for row in rows] == ["overlays/a.png", "overlays/a-1.png"]
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        SegmentationPredictionWriter(pixel_spacing_mm=0)


class NameWriter(PredictionWriter):
    """A writer of one ``name`` column, to watch the CSV's life without a model."""

    def header(self, pl_module):
        return ["name"]

    def batch_rows(self, pl_module, prediction, batch):
        return [[name] for name in prediction["name"]]


def test_predictions_csv_appears_only_complete_and_an_interrupted_run_keeps_its_rows(tmp_path, caplog):
    trainer = SimpleNamespace(log_dir=str(tmp_path))
    finished, stopped = NameWriter(overlays=False), NameWriter(overlays=False)
    for writer in (finished, stopped):
        writer.on_predict_start(trainer, None)
        writer.write_on_batch_end(trainer, None, {"name": ["a.png", "b.png"]}, None, None, 0, 0)
        assert not (writer.folder / "predictions.csv").exists()
    finished.on_predict_end(trainer, None)
    finished.teardown(trainer, None, "predict")
    stopped.teardown(trainer, None, "predict")  # an error ended the run before on_predict_end
    assert (finished.folder / "predictions.csv").read_text().split() == ["name", "a.png", "b.png"]
    assert sorted(p.name for p in stopped.folder.iterdir()) == ["predictions-incomplete.csv"]
    assert (stopped.folder / "predictions-incomplete.csv").read_text().split() == ["name", "a.png", "b.png"]
    assert "stopped after 2 images" in caplog.text
