"""DICOM in (single frames, cine loops, region calibration in mm) and DICOM SEG out (``--output-format dicom-seg``).

Files are the ultrasound examples inside the installed pydicom wheel and uncompressed ultrasound files written here
with a known ``SequenceOfUltrasoundRegions`` calibration (``tests/dicom_files.py``).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from dicom_files import REGION, SPACING_MM, region_item, wheel_file, write_us_dicom
from PIL import Image
from shipped_configs import CONFIGS

from usvl.callbacks import SegmentationPredictionWriter
from usvl.data.dataset import StreamingImageDataset, UltrasoundDataset
from usvl.data.decode import decode_image
from usvl.data.dicom import read_dicom_frame, read_dicom_info
from usvl.metrics import SegmentationMetrics
from usvl.tasks import SegmentationTask

LEFT, TOP, RIGHT, BOTTOM = REGION[0], REGION[1], REGION[2] + 1, REGION[3] + 1
"""The written files' region as a half-open box: columns 10-57, rows 6-41 (48 x 36)."""
HEIGHT, WIDTH = 50, 64
"""The written files' frame size."""


def b_mode(seed: int = 0, frames: int | None = None) -> np.ndarray:
    """A frame (or ``frames`` frames) of noise inside the region and bright 'screen text' (250) outside it."""
    rng = np.random.default_rng(seed)
    shape = (frames, HEIGHT, WIDTH) if frames else (HEIGHT, WIDTH)
    pixels = np.full(shape, 250, dtype=np.uint8)
    pixels[..., TOP:BOTTOM, LEFT:RIGHT] = rng.integers(0, 200, (*shape[:-2], BOTTOM - TOP, RIGHT - LEFT))
    return pixels


def manifest(*paths: Path) -> pd.DataFrame:
    return pd.DataFrame({"name": [p.name for p in paths], "image": [str(p) for p in paths], "label": -1})


# --- reading ---------------------------------------------------------------------------------------------------------


def test_region_calibration_crops_the_b_mode_region_and_gives_its_pixel_spacing_in_mm(tmp_path):
    pixels = b_mode()
    path = write_us_dicom(tmp_path / "us.dcm", pixels)
    frame = read_dicom_frame(path)
    assert np.array_equal(frame.array, pixels[TOP:BOTTOM, LEFT:RIGHT])  # the screen text outside is gone
    assert frame.spacing_mm == pytest.approx(SPACING_MM)  # PhysicalDeltaY/X 0.008/0.012 cm -> 0.08/0.12 mm
    decoded = decode_image(path, 24)
    assert decoded.source_size == (RIGHT - LEFT, BOTTOM - TOP) == (48, 36)
    assert decoded.spacing_mm == pytest.approx(SPACING_MM)
    expected = Image.fromarray(pixels[TOP:BOTTOM, LEFT:RIGHT]).resize((24, 24), Image.BILINEAR)
    assert np.array_equal(decoded.array, np.asarray(expected))  # then resized like any image


def test_a_region_outside_the_image_or_in_other_units_gives_no_spacing(tmp_path):
    pixels = b_mode()
    resized = write_us_dicom(tmp_path / "resized.dcm", pixels, regions=[region_item((10, 6, 595, 414))])
    frame = read_dicom_frame(resized)  # a region calibrated on a larger image: neither its box nor spacing hold
    assert frame.array.shape == (HEIGHT, WIDTH) and frame.spacing_mm is None
    assert not frame.info.region.calibrated
    seconds = write_us_dicom(tmp_path / "seconds.dcm", pixels, regions=[region_item(units=4)])
    frame = read_dicom_frame(seconds)  # the box holds, the units are no length
    assert frame.array.shape == (BOTTOM - TOP, RIGHT - LEFT) and frame.spacing_mm is None
    bare = write_us_dicom(tmp_path / "bare.dcm", pixels, regions=[])
    assert read_dicom_frame(bare).spacing_mm is None and decode_image(bare, 16).spacing_mm is None


def test_photometric_interpretations_become_grey_as_png_images_do(tmp_path):
    from pydicom.pixels import convert_color_space

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    png = decode_image(tmp_path / "rgb.png", 32).array
    as_rgb = write_us_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", regions=[])
    assert np.array_equal(decode_image(as_rgb, 32).array, png)  # the same luma rule (ITU-R 601, Pillow)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    as_ybr = write_us_dicom(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL", regions=[])
    assert np.abs(decode_image(as_ybr, 32).array.astype(int) - png).max() <= 2  # YBR -> RGB -> grey (rounding)

    grey = b_mode(2)
    mono2 = read_dicom_frame(write_us_dicom(tmp_path / "m2.dcm", grey)).array
    mono1 = read_dicom_frame(write_us_dicom(tmp_path / "m1.dcm", grey, photometric="MONOCHROME1")).array
    assert np.array_equal(mono1, 255 - mono2)  # MONOCHROME1: low values are bright
    twelve = grey.astype(np.uint16) * 4  # 12-bit data (a dark image, max 1000) in 16 bits: scaled by BitsStored
    deep = read_dicom_frame(write_us_dicom(tmp_path / "m12.dcm", twelve, bits_stored=12)).array
    assert np.array_equal(deep, np.rint(grey[TOP:BOTTOM, LEFT:RIGHT].astype(float) * 4 * 255 / 4095))


def test_the_wheel_ultrasound_examples_decode_frame_by_frame():
    cine = wheel_file("examples_ybr_color.dcm")  # US multi-frame, YBR_FULL_422, JPEG baseline, 30 frames
    info = read_dicom_info(cine)
    assert info.frames == 30 and info.photometric == "YBR_FULL_422"
    assert not info.region.calibrated  # its region (84..595 x 31..414) lies outside its 320 x 240 frames
    first, last = read_dicom_frame(cine, 1).array, read_dicom_frame(cine, 30).array
    assert first.shape == last.shape == (240, 320) and first.dtype == np.uint8
    assert first.std() > 5 and not np.array_equal(first, last)
    with pytest.raises(ValueError, match="multi-frame DICOM .30 frames."):
        read_dicom_frame(cine)
    with pytest.raises(ValueError, match="frame 31 does not exist"):
        read_dicom_frame(cine, 31)

    import pydicom

    rgb = wheel_file("examples_rgb_color.dcm")  # US, RGB, uncompressed
    luma = np.asarray(Image.fromarray(pydicom.dcmread(rgb).pixel_array).convert("L"))
    assert np.array_equal(read_dicom_frame(rgb).array, luma)
    assert read_dicom_frame(wheel_file("examples_palette.dcm")).array.shape == (350, 800)  # PALETTE COLOR
    jpeg2000 = read_dicom_frame(wheel_file("examples_jpeg2k.dcm")).array  # needs the openjpeg plugin (dicom extra)
    assert jpeg2000.shape == (480, 640) and jpeg2000.std() > 5


def test_bad_dicom_files_raise_naming_the_file_and_what_to_do(tmp_path, monkeypatch):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(ValueError, match=r"junk\.dcm: not a readable DICOM"):
        decode_image(junk, 16)
    with pytest.raises(ValueError, match=r"test-SR\.dcm: it holds no image"):
        decode_image(wheel_file("test-SR.dcm"), 16)
    from pydicom.pixels.decoders import JPEG2000LosslessDecoder

    monkeypatch.setattr(JPEG2000LosslessDecoder, "_available", {})  # as without the pylibjpeg plugins
    advice = r'examples_jpeg2k\.dcm: its transfer syntax JPEG 2000.*pip install "usvl\[dicom\]"'
    with pytest.raises(ValueError, match=advice):
        decode_image(wheel_file("examples_jpeg2k.dcm"), 16)


def test_bad_dicom_files_are_skipped_and_counted_like_bad_pngs(tmp_path, caplog):
    good = write_us_dicom(tmp_path / "good.dcm", b_mode())
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 300)
    dataset = UltrasoundDataset(manifest(good, junk), 16, on_bad_file="skip", cache=False)
    assert dataset.names == ["good.dcm"] and [name for name, _ in dataset.skipped] == ["junk.dcm"]
    with pytest.raises(ValueError, match="junk.dcm"):
        StreamingImageDataset(manifest(good, junk), 16, on_bad_file="error")
    stream = StreamingImageDataset(manifest(good, junk), 16, on_bad_file="skip")
    with caplog.at_level(logging.WARNING):
        assert [item["name"] for item in stream] == ["good.dcm"]
    assert "Skipped junk.dcm" in caplog.text


# --- frames and spacing through the datasets and the metrics ---------------------------------------------------------


def test_a_cine_loop_is_one_prediction_item_per_frame_with_its_spacing(tmp_path):
    loop = b_mode(3, frames=3)
    loop[:, TOP:BOTTOM, LEFT:RIGHT] = np.array([10, 100, 190], dtype=np.uint8)[:, None, None]  # one grey per frame
    cine = write_us_dicom(tmp_path / "cine.dcm", loop)
    single = write_us_dicom(tmp_path / "one.dcm", b_mode())
    Image.fromarray(b_mode()).save(tmp_path / "plain.png")
    items = list(StreamingImageDataset(manifest(tmp_path / "plain.png", single, cine), 16, block_size=2))
    assert [item["name"] for item in items] == ["plain.png", "one.dcm", "cine.dcm#frame001", "cine.dcm#frame002",
                                                "cine.dcm#frame003"]
    assert [int(item["frame"]) for item in items] == [0, 0, 1, 2, 3]
    assert [int(item["image"].float().mean()) for item in items[2:]] == [10, 100, 190]  # frame k is frame k
    assert items[0]["original_size"].tolist() == [HEIGHT, WIDTH] and torch.isnan(items[0]["spacing"]).all()
    for item in items[1:]:
        assert item["original_size"].tolist() == [BOTTOM - TOP, RIGHT - LEFT]
        assert item["spacing"].tolist() == pytest.approx(SPACING_MM)


def test_test_images_carry_their_spacing_so_hd95_and_asd_come_out_in_mm(tmp_path, usvl_cache):
    size = 24  # the model's resolution: one resized pixel is 36/24 rows x 48/24 columns of the region
    image = write_us_dicom(tmp_path / "us.dcm", b_mode())
    mask = np.zeros((BOTTOM - TOP, RIGHT - LEFT), dtype=np.uint8)
    mask[12:24, 8:32] = 255
    Image.fromarray(mask).save(tmp_path / "us_mask.png")
    rows = pd.DataFrame({"name": ["us.dcm"], "image": [str(image)], "mask": [str(tmp_path / "us_mask.png")],
                         "label": [0]})
    expected = (SPACING_MM[0] * 36 / size, SPACING_MM[1] * 48 / size)
    for attempt in range(2):  # decoded, then from the decoded-image cache
        dataset = UltrasoundDataset(rows, size, with_masks=True, cache=usvl_cache / "decoded-dicom")
        assert dataset.cache_hit == bool(attempt)
        assert dataset[0]["spacing"].tolist() == pytest.approx(expected)
    batch = torch.utils.data.default_collate([dataset[0]])
    task = SimpleNamespace(pixel_spacing_mm=None)
    spacing = SegmentationTask._spacing(task, batch)
    true = batch["mask"].bool()
    pred = torch.roll(true, shifts=3, dims=-1)  # the lesion predicted 3 resized columns to the right
    metrics = SegmentationMetrics()
    metrics.update(pred, true, spacing=spacing)
    record = metrics.per_image()[0]
    assert record["hd95"] == pytest.approx(3 * expected[1]) and record["spacing_col"] == pytest.approx(expected[1])

    png = {"mask": true.clone(), "spacing": torch.full((1, 2), float("nan")), "name": ["plain.png"]}
    mixed = {key: torch.cat([batch[key], png[key]]) if key != "name" else batch[key] + png[key]
             for key in ("mask", "spacing", "name")}
    with pytest.raises(ValueError, match=r"mixes images with a pixel spacing.*plain\.png"):
        SegmentationTask._spacing(task, mixed)
    fallback = SegmentationTask._spacing(SimpleNamespace(pixel_spacing_mm=0.5), mixed)
    assert fallback.tolist() == [pytest.approx(list(expected)), [0.5, 0.5]]


# --- prediction: rows, mm areas and DICOM SEG ------------------------------------------------------------------------


class FakeModule:
    """What the writer reads of a segmentation model."""

    threshold = 0.5
    lesion_classes = ["benign", "malignant"]


def test_the_writer_gives_the_lesion_area_in_mm2_from_the_dicom_calibration(tmp_path):
    Image.fromarray(b_mode()).save(tmp_path / "plain.png")
    dicom = write_us_dicom(tmp_path / "us.dcm", b_mode())
    probability = torch.zeros(2, 1, 64, 64)
    probability[:, :, :, :32] = 0.9  # the left half of each image is lesion
    batch = {"path": [str(tmp_path / "plain.png"), str(dicom)], "original_size": torch.tensor([[50, 64], [36, 48]]),
             "spacing": torch.tensor([[float("nan")] * 2, list(SPACING_MM)], dtype=torch.float64),
             "frame": torch.tensor([0, 0]), "name": ["plain.png", "us.dcm"]}
    for pixel_spacing, plain_area in ((None, ""), (0.5, f"{50 * 32 * 0.25:.3f}")):
        writer = SegmentationPredictionWriter(output_dir=str(tmp_path / "out"), pixel_spacing_mm=pixel_spacing)
        writer.on_predict_start(SimpleNamespace(log_dir=None), FakeModule())
        writer.write_on_batch_end(None, FakeModule(), {"name": batch["name"], "probability": probability}, None,
                                  batch, 0, 0)
        writer.on_predict_end(None, FakeModule())
        with (writer.folder / "predictions.csv").open(newline="", encoding="utf-8") as handle:
            plain, us = list(csv.DictReader(handle))
        assert (plain["lesion_area_px"], plain["lesion_area_mm2"]) == (str(50 * 32), plain_area)
        assert (us["width"], us["height"], us["lesion_area_px"]) == ("48", "36", str(36 * 24))
        assert us["lesion_area_mm2"] == f"{36 * 24 * SPACING_MM[0] * SPACING_MM[1]:.3f}" == "8.294"  # not 0.5 mm
        assert Image.open(writer.folder / us["mask"]).size == (48, 36)


@pytest.fixture
def image_as_probability(monkeypatch):
    """Segmentation predictions that are the input image itself (grey / 255): masks known without any training."""

    def predict_step(self, batch, batch_idx):
        probability = batch["image"].float()[:, :1] / 255.0
        return {"name": batch["name"], "mask": (probability > self.threshold).to(torch.uint8),
                "probability": probability}

    monkeypatch.setattr(SegmentationTask, "predict_step", predict_step)


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """PNG, JPEG, a calibrated single frame, a calibrated 3-frame cine loop and the wheel's uncalibrated RGB image."""
    root = tmp_path / "mixed"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)).save(root / "images" / "b.jpg")
    write_us_dicom(root / "images" / "c.dcm", b_mode(5))
    write_us_dicom(root / "images" / "d.dcm", b_mode(6, frames=3))
    shutil.copy(wheel_file("examples_rgb_color.dcm"), root / "images" / "e.dcm")
    return root


def predict(folder: Path, out: Path, *extra: str):
    from usvl.cli import run_lightning

    encoder = {"class_path": "usvl.models.encoders.TinyViTCLIP",
               "init_args": {"embed_dim": 32, "img_size": 64, "feature_taps": [1, 2, 3]}}
    adapter = {"class_path": "usvl.models.adapters.MonaAdapter", "init_args": {"bottleneck": 8, "points": None}}
    run_lightning(["predict", "--config", str(CONFIGS / "breast_seg.yaml"), "--model.init_args.encoder",
                   json.dumps(encoder), "--model.init_args.adapter", json.dumps(adapter),
                   "--data", "usvl.data.FolderDataModule", "--data.root", str(folder), "--data.image_size", "64",
                   "--data.batch_size", "4", "--trainer.logger.init_args.save_dir", str(out), *extra])
    (folder_out,) = sorted(out.rglob("predictions.csv"))[-1:]
    with folder_out.open(newline="", encoding="utf-8") as handle:
        return folder_out.parent, list(csv.DictReader(handle))


def test_predict_on_a_mixed_folder_writes_a_row_per_image_or_frame_with_mm_areas_and_dicom_seg(
        mixed_folder, tmp_path, image_as_probability, caplog):
    import highdicom as hd
    import pydicom

    folder, rows = predict(mixed_folder, tmp_path / "png")
    names = ["a.png", "b.jpg", "c.dcm", "d.dcm#frame001", "d.dcm#frame002", "d.dcm#frame003", "e.dcm"]
    assert [row["name"] for row in rows] == names
    sizes = [(56, 40), (44, 30), (48, 36), (48, 36), (48, 36), (48, 36), (320, 240)]
    assert [(int(row["width"]), int(row["height"])) for row in rows] == sizes
    for row in rows:
        area = int(row["lesion_area_px"])
        assert area > 0 and int((np.asarray(Image.open(folder / row["mask"])) > 0).sum()) == area
        if row["name"].startswith(("c.dcm", "d.dcm")):
            assert float(row["lesion_area_mm2"]) == pytest.approx(area * SPACING_MM[0] * SPACING_MM[1], abs=1e-3)
        else:
            assert row["lesion_area_mm2"] == ""  # no calibration: pixels only
    assert [row["mask"] for row in rows[2:6]] == ["c.png", "d_frame001.png", "d_frame002.png", "d_frame003.png"]
    assert len(list((folder / "overlays").glob("*.png"))) == 7

    with caplog.at_level(logging.WARNING):
        seg_folder, seg_rows = predict(mixed_folder, tmp_path / "seg", "--output-format", "dicom-seg")
    assert "2 of 7 images are not DICOM" in caplog.text
    assert [row["mask"] for row in seg_rows] == ["a.png", "b.png", "c.seg.dcm", "d_frame001.seg.dcm",
                                                 "d_frame002.seg.dcm", "d_frame003.seg.dcm", "e.seg.dcm"]
    assert [row["lesion_area_px"] for row in seg_rows] == [row["lesion_area_px"] for row in rows]
    series = set()
    for png_row, row in zip(rows[2:], seg_rows[2:], strict=True):
        source_name, _, frame = row["name"].partition("#frame")
        source = pydicom.dcmread(mixed_folder / "images" / source_name, stop_before_pixels=True)
        seg = hd.seg.segread(seg_folder / row["mask"])
        assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.number_of_segments == 1
        assert seg.SegmentSequence[0].SegmentLabel == "lesion (benign, malignant)"
        (referenced,) = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert referenced.ReferencedSOPClassUID == source.SOPClassUID
        item = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert item.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert int(item.get("ReferencedFrameNumber", 0)) == int(frame or 0)
        full = seg.pixel_array.astype(bool)
        assert full.shape == (source.Rows, source.Columns)
        expected = np.zeros_like(full)
        box = (slice(TOP, BOTTOM), slice(LEFT, RIGHT)) if source_name != "e.dcm" else (slice(None), slice(None))
        expected[box] = np.asarray(Image.open(folder / png_row["mask"])) > 0
        assert np.array_equal(full, expected)  # the PNG run's mask, put back at the region
        measures = seg.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
        if source_name != "e.dcm":
            assert [float(v) for v in measures[0].PixelSpacing] == pytest.approx(SPACING_MM)
        series.add(seg.SeriesInstanceUID)
    assert len(series) == 1  # one series per run


def test_data_check_reads_a_dicom_image_as_training_does_and_names_a_cine_loop(tmp_path):
    from usvl.data.check import check_manifest

    single = write_us_dicom(tmp_path / "one.dcm", b_mode(7))
    cine = write_us_dicom(tmp_path / "loop.dcm", b_mode(8, frames=2))
    mask = tmp_path / "one_mask.png"
    Image.fromarray(np.zeros((BOTTOM - TOP, RIGHT - LEFT), dtype=np.uint8)).save(mask)  # the region's size
    rows = pd.DataFrame({"name": ["one.dcm", "loop.dcm"], "image": [str(single), str(cine)],
                         "mask": [str(mask), str(mask)], "label": [0, 0]})
    report = check_manifest(rows, task="segmentation", class_names=["lesion"], threads=1)
    problems = {name: problem.detail for problem in report.problems for name in problem.names}
    assert "one.dcm" not in problems  # read as its 48 x 36 region, which its mask fits
    assert "multi-frame DICOM (2 frames)" in problems["loop.dcm"]
    assert report.image_modes == {"DICOM": 1}
