"""Decoding of real-world image and mask quirks, and the dataset's bad-file policy."""

import io
import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from usvl.data.dataset import UltrasoundDataset
from usvl.data.decode import (
    binarise_mask,
    check_mask_size,
    decode_image,
    decode_mask,
    load_image,
    load_mask,
    scale_to_uint8,
)

EXIF_ORIENTATION = 0x0112


def disk(size: int = 64, radius: float = 16, scale: int = 1) -> np.ndarray:
    """A centred disk as bool, rendered at ``scale`` x supersampling (for anti-aliased versions)."""
    side = size * scale
    yy, xx = np.mgrid[:side, :side] + 0.5
    inside = (xx - side / 2) ** 2 + (yy - side / 2) ** 2 <= (radius * scale) ** 2
    return inside


def antialiased_disk(size: int = 64, radius: float = 16) -> np.ndarray:
    big = disk(size, radius, scale=4).astype(np.float32)
    return big.reshape(size, 4, size, 4).mean(axis=(1, 3))  # coverage in [0, 1]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / max((a | b).sum(), 1)


def save(array: np.ndarray, path, mode: str | None = None, **kwargs) -> str:
    Image.fromarray(array, mode=mode).save(path, **kwargs) if mode else Image.fromarray(array).save(path, **kwargs)
    return str(path)


# --- masks -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreground", [1, 255, 38])
def test_label_valued_masks_are_binarised_at_half_their_maximum(tmp_path, foreground):
    truth = disk()
    path = save((truth * foreground).astype(np.uint8), tmp_path / f"m{foreground}.png")
    mask = load_mask(path, 64)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert np.array_equal(mask, truth.astype(np.uint8))


def test_empty_mask_stays_empty(tmp_path):
    path = save(np.zeros((40, 40), np.uint8), tmp_path / "empty.png")
    assert load_mask(path, 32).max() == 0
    assert not binarise_mask(np.zeros((3, 3))).any()


def test_antialiased_grey_mask(tmp_path):
    coverage = antialiased_disk()
    path = save(np.rint(coverage * 255).astype(np.uint8), tmp_path / "aa.png")
    assert iou(load_mask(path, 64), coverage >= 0.5) > 0.98


def test_sixteen_bit_mask(tmp_path):
    truth = disk()
    path = save((truth * 65535).astype(np.uint16), tmp_path / "m16.png")
    assert Image.open(path).mode.startswith("I")
    assert np.array_equal(load_mask(path, 64), truth.astype(np.uint8))


def test_colour_masks_count_any_channel(tmp_path):
    truth = disk()
    red = np.zeros((64, 64, 3), np.uint8)
    red[truth, 0] = 255  # drawn in red only: grey would be 76
    assert np.array_equal(load_mask(save(red, tmp_path / "red.png"), 64), truth.astype(np.uint8))
    blue = np.zeros((64, 64, 3), np.uint8)
    blue[truth, 2] = 200  # blue only: grey would be 23
    assert np.array_equal(load_mask(save(blue, tmp_path / "blue.png"), 64), truth.astype(np.uint8))


def test_rgba_masks_ignore_alpha_unless_the_colour_is_empty(tmp_path):
    truth = disk()
    transparent_lesion = np.zeros((64, 64, 4), np.uint8)
    transparent_lesion[truth, :3] = 255  # colour holds the lesion, alpha is 0 everywhere
    mask = load_mask(save(transparent_lesion, tmp_path / "t.png", "RGBA"), 64)
    assert np.array_equal(mask, truth.astype(np.uint8))
    alpha_only = np.zeros((64, 64, 4), np.uint8)
    alpha_only[truth, 3] = 255  # colour empty, lesion drawn in alpha
    assert np.array_equal(load_mask(save(alpha_only, tmp_path / "a.png", "RGBA"), 64), truth.astype(np.uint8))
    opaque_black = np.zeros((64, 64, 4), np.uint8)
    opaque_black[..., 3] = 255  # an empty mask saved with an opaque alpha channel
    assert load_mask(save(opaque_black, tmp_path / "o.png", "RGBA"), 64).max() == 0


def test_palette_and_la_masks(tmp_path):
    truth = disk()
    palette = Image.fromarray(truth.astype(np.uint8), mode="L").convert("P")
    palette.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # index 1 -> dark red
    palette.save(tmp_path / "p.png")
    assert np.array_equal(load_mask(str(tmp_path / "p.png"), 64), truth.astype(np.uint8))
    la = np.zeros((64, 64, 2), np.uint8)
    la[truth, 0] = 255
    la[..., 1] = 255
    assert np.array_equal(load_mask(save(la, tmp_path / "la.png", "LA"), 64), truth.astype(np.uint8))


def test_jpeg_mask_with_compression_noise(tmp_path):
    truth = disk(128, 30)
    path = save((truth * 255).astype(np.uint8), tmp_path / "m.jpg", quality=40)
    raw = np.asarray(Image.open(path))
    assert len(np.unique(raw)) > 2  # there really is noise
    mask = load_mask(path, 128)
    assert iou(mask, truth) > 0.97
    far = disk(128, 40)  # no speckles away from the edge
    assert not mask[~far].any() and mask[disk(128, 20)].all()


def test_thin_lesion_survives_downsampling(tmp_path):
    thin = np.zeros((1024, 1024), np.uint8)
    thin[500:503, 200:800] = 255  # 3 px wide, reduced 16x
    mask = load_mask(save(thin, tmp_path / "thin.png"), 64)
    assert mask.any()
    rows = np.nonzero(mask.any(axis=1))[0]
    assert rows.min() >= 29 and rows.max() <= 33  # where the line is, not smeared
    speck = np.zeros((2048, 2048), np.uint8)
    speck[1500, 600] = 255  # below 1/255 of an output pixel: kept as the pixel under it
    kept = load_mask(save(speck, tmp_path / "speck.png"), 64)
    assert kept.sum() == 1 and kept[46, 18] == 1
    blob = np.zeros((1024, 1024), np.uint8)
    blob[100:400, 100:400] = 255
    area = load_mask(save(blob, tmp_path / "blob.png"), 64)
    assert abs(int(area.sum()) - (300 / 16) ** 2) < 40  # area keeps its size


def test_several_masks_of_one_image_are_merged(tmp_path):
    left, right = np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8)
    left[4:10, 4:10] = 255
    right[20:28, 20:28] = 1
    paths = [save(left, tmp_path / "a_mask.png"), save(right, tmp_path / "a_mask_1.png")]
    merged = load_mask(paths, 32)
    assert merged.sum() == 36 + 64
    other = save(np.zeros((16, 32), np.uint8), tmp_path / "a_mask_2.png")
    with pytest.raises(ValueError, match="a_mask_2.png"):
        load_mask(paths + [other], 32)


# --- images ------------------------------------------------------------------------------------------------


def test_rgba_image_is_composited_over_black(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255
    rgba[:4, :, 3] = 128
    image = load_image(save(rgba, tmp_path / "rgba.png", "RGBA"), 8)
    assert image[6, 3] == 200 and abs(int(image[1, 3]) - 100) <= 1
    opaque = rgba.copy()
    opaque[..., 3] = 255
    assert (load_image(save(opaque, tmp_path / "opaque.png", "RGBA"), 8) == 200).all()


def test_cmyk_jpeg_image(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (255, 0, 0, 0)).save(path, quality=95)  # pure cyan = RGB (0, 255, 255)
    assert Image.open(path).mode == "CMYK"
    image = load_image(str(path), 16)
    assert image.shape == (16, 16) and abs(int(image.mean()) - 179) <= 4


def test_other_modes_become_grey(tmp_path):
    ycbcr = Image.new("RGB", (16, 16), (90, 90, 90)).convert("YCbCr")
    ycbcr.save(tmp_path / "ycbcr.jpg", quality=95)
    assert abs(int(load_image(str(tmp_path / "ycbcr.jpg"), 8).mean()) - 90) <= 3
    Image.new("1", (16, 16), 1).save(tmp_path / "bw.png")
    assert (load_image(str(tmp_path / "bw.png"), 8) == 255).all()
    Image.new("LA", (16, 16), (80, 255)).save(tmp_path / "la.png")
    assert (load_image(str(tmp_path / "la.png"), 8) == 80).all()
    Image.new("P", (16, 16), 3).save(tmp_path / "p.png")
    assert load_image(str(tmp_path / "p.png"), 8).shape == (8, 8)


def test_sixteen_bit_image_is_scaled_by_bit_depth(tmp_path):
    twelve_bit = np.zeros((16, 16), np.uint16)
    twelve_bit[:, :8] = 4095
    twelve_bit[:, 8:] = 2048
    image = load_image(save(twelve_bit, tmp_path / "12bit.png"), 16)
    assert image.dtype == np.uint8 and image[0, 0] == 255 and abs(int(image[0, 12]) - 128) <= 1
    full = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    assert np.array_equal(load_image(save(full, tmp_path / "16bit.png"), 16), np.arange(256).reshape(16, 16))
    eight_in_sixteen = np.full((16, 16), 200, np.uint16)
    assert (load_image(save(eight_in_sixteen, tmp_path / "8in16.png"), 16) == 200).all()


def test_thirty_two_bit_and_float_images(tmp_path):
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    image = load_image(str(tmp_path / "f.tif"), 8)
    assert image[0, 0] == 0 and image[-1, -1] == 255
    signed = np.arange(-32, 32, dtype=np.int32).reshape(8, 8)
    assert scale_to_uint8(signed).min() == 0 and scale_to_uint8(signed).max() == 255  # min-max for negatives
    thirty_two = np.full((8, 8), 65535 * 4, dtype=np.int32)
    Image.fromarray(thirty_two, mode="I").save(tmp_path / "i32.tif")
    assert load_image(str(tmp_path / "i32.tif"), 8).max() <= 255
    assert scale_to_uint8(np.full((4, 4), np.nan, np.float32)).max() == 0


# --- bad files ---------------------------------------------------------------------------------------------


def png_bytes(side: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_truncated_png_raises_value_error_naming_it(tmp_path):
    path = tmp_path / "truncated scan.png"
    data = png_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated scan.png"):
        load_image(str(path), 32)
    with pytest.raises(ValueError, match="truncated scan.png"):
        load_mask(str(path), 32)
    from PIL import ImageFile

    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_truncated_jpeg_and_garbage_raise_value_error(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(ValueError, match="cut.jpg"):
        load_image(str(truncated), 32)
    for name, payload in [("empty.png", b""), ("text.png", b"hello"), ("header.png", png_bytes()[:40])]:
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match=name):
            load_image(str(tmp_path / name), 32)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        load_image(str(tmp_path / "nowhere.png"), 32)


# --- paths, size, orientation ------------------------------------------------------------------------------


def test_non_ascii_paths(tmp_path):
    folder = tmp_path / "échographie 超声"
    folder.mkdir()
    image = save(np.full((20, 20), 77, np.uint8), folder / "乳腺 (1).png")
    mask = save((disk(20, 5) * 255).astype(np.uint8), folder / "乳腺 (1)_mask.png")
    assert (load_image(image, 10) == 77).all()
    assert load_mask(mask, 20).sum() == disk(20, 5).sum()
    manifest = pd.DataFrame({"name": ["乳腺 (1)"], "image": [image], "mask": [mask], "label": [0]})
    dataset = UltrasoundDataset(manifest, 16, with_masks=True, cache=False)
    assert dataset[0]["name"] == "乳腺 (1)"


def test_large_jpeg_is_drafted_and_keeps_its_content(tmp_path):
    big = np.zeros((3000, 4000), np.uint8)
    big[:, :2000] = 255
    path = save(big, tmp_path / "big.jpg", quality=90)
    with Image.open(path) as probe:
        probe.draft("L", (64, 64))
        assert probe.size[0] < 1000  # the decoder really reduces on the DCT scale
    decoded = decode_image(path, 64)
    assert decoded.source_size == (4000, 3000)
    assert decoded.array[:, :28].min() > 240 and decoded.array[:, 36:].max() < 15


def test_large_png_is_reduced_before_resizing(tmp_path):
    big = np.zeros((2400, 3200), np.uint8)
    big[:1200] = 255
    decoded = decode_image(save(big, tmp_path / "big.png"), 64)
    assert decoded.source_size == (3200, 2400)
    assert decoded.array[:28].min() > 250 and decoded.array[36:].max() < 5
    mask = decode_mask(save(big, tmp_path / "big_mask.jpg"), 64)
    assert mask.source_size == (3200, 2400) and mask.array[:31].all() and not mask.array[33:].any()


def exif_jpeg(array: np.ndarray, path, orientation: int, **kwargs) -> str:
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = orientation
    image.save(path, exif=exif.tobytes(), **kwargs)
    return str(path)


def test_exif_rotation_is_applied_to_images_and_masks(tmp_path):
    raw = np.zeros((20, 40), np.uint8)  # stored 40 wide, 20 high
    raw[:, :10] = 255  # bright band on the stored left
    # Orientation 6: the viewer rotates 90 degrees clockwise, so the stored left becomes the displayed top.
    image = decode_image(exif_jpeg(raw, tmp_path / "rot.jpg", 6, quality=95), 40)
    assert image.source_size == (20, 40)
    assert image.array[:8].mean() > 240 and image.array[12:].mean() < 15
    mask = decode_mask(exif_jpeg(raw, tmp_path / "rot_mask.jpg", 6, quality=95), 40)
    assert mask.source_size == (20, 40) and mask.array[:9].all() and not mask.array[11:].any()
    png_mask = decode_mask(exif_jpeg(raw, tmp_path / "rot_mask.png", 6), 40)
    assert np.array_equal(png_mask.array, mask.array)


def test_mask_of_displayed_orientation_matches_rotated_image(tmp_path):
    raw = np.zeros((20, 40), np.uint8)
    raw[:, :10] = 255
    image = exif_jpeg(raw, tmp_path / "scan.jpg", 6, quality=95)
    drawn = np.zeros((40, 20), np.uint8)  # drawn on the displayed (upright) picture, no EXIF
    drawn[:10] = 255
    mask = save(drawn, tmp_path / "scan_mask.png")
    manifest = pd.DataFrame({"name": ["scan"], "image": [image], "mask": [mask], "label": [1]})
    item = UltrasoundDataset(manifest, 32, with_masks=True, cache=False)[0]
    bright = item["image"][0] > 127
    assert (bright == item["mask"][0].bool()).float().mean() > 0.95


def test_mask_size_rules(tmp_path):
    assert check_mask_size("i.png", (500, 300), "m.png", (500, 300)) is False
    assert check_mask_size("i.png", (500, 300), "m.png", (250, 150)) is True
    assert check_mask_size("i.png", (501, 333), "m.png", (250, 166)) is True
    with pytest.raises(ValueError, match=r"m\.png.*300x500.*i\.png.*500x300"):
        check_mask_size("i.png", (500, 300), "m.png", (300, 500))
    image = np.zeros((60, 80), np.uint8)
    image[:30] = 255
    half_mask = np.zeros((30, 40), np.uint8)
    half_mask[:15] = 255
    rows = pd.DataFrame({"name": ["a"], "image": [save(image, tmp_path / "a.png")],
                         "mask": [save(half_mask, tmp_path / "a_mask.png")], "label": [0]})
    item = UltrasoundDataset(rows, 32, with_masks=True, cache=False)[0]
    assert item["mask"][0, :16].all() and not item["mask"][0, 16:].any()
    rows.loc[0, "mask"] = save(np.zeros((50, 50), np.uint8), tmp_path / "wrong_mask.png")
    with pytest.raises(ValueError, match=r"wrong_mask\.png.*a\.png"):
        UltrasoundDataset(rows, 32, with_masks=True, cache=False)


# --- dataset policy ----------------------------------------------------------------------------------------


@pytest.fixture
def mixed_manifest(tmp_path):
    rows = []
    for index in range(6):
        image = save(np.full((24, 24), 10 * index, np.uint8), tmp_path / f"img{index}.png")
        mask = save((disk(24, 6) * 255).astype(np.uint8), tmp_path / f"img{index}_mask.png")
        rows.append({"name": f"img{index}", "image": image, "mask": mask, "label": index % 2})
    (tmp_path / "img1.png").write_bytes(png_bytes()[:100])  # truncated image
    rows[3]["mask"] = None  # missing mask
    (tmp_path / "img4_mask.png").unlink()  # mask path in the manifest, file gone
    return pd.DataFrame(rows)


def test_dataset_skips_bad_rows_and_says_so(mixed_manifest, caplog):
    with caplog.at_level(logging.WARNING, logger="usvl.data.dataset"):
        dataset = UltrasoundDataset(mixed_manifest, 16, with_masks=True, threads=2, on_bad_file="skip", cache=False)
    assert len(dataset) == 3 and dataset.names == ["img0", "img2", "img5"] and dataset.kept == [0, 2, 5]
    assert [name for name, _ in dataset.skipped] == ["img1", "img3", "img4"]
    reasons = dict(dataset.skipped)
    assert "img1.png" in reasons["img1"] and reasons["img3"] == "no mask" and "img4_mask.png" in reasons["img4"]
    assert "Skipped 3 of 6" in caplog.text and "img1" in caplog.text
    item = dataset[1]
    assert item["image"].shape == (1, 16, 16) and item["image"].dtype.is_floating_point is False
    assert int(item["image"].float().mean()) == 20 and int(item["label"]) == 0
    assert item["mask"].shape == (1, 16, 16) and set(item["mask"].unique().tolist()) == {0, 1}


def test_dataset_errors_name_the_file(mixed_manifest):
    with pytest.raises(FileNotFoundError, match="img3"):
        UltrasoundDataset(mixed_manifest, 16, with_masks=True, cache=False)
    with pytest.raises(ValueError, match="img1.png"):
        UltrasoundDataset(mixed_manifest, 16, with_masks=False, threads=3, cache=False)
    rows = mixed_manifest.drop(index=[1, 3]).reset_index(drop=True)
    with pytest.raises(FileNotFoundError, match="img4_mask.png"):
        UltrasoundDataset(rows, 16, with_masks=True, cache=False)
    classification = UltrasoundDataset(rows, 16, with_masks=False, cache=False)
    assert len(classification) == 4 and classification.masks is None and "mask" not in classification[0]
    with pytest.raises(ValueError, match="on_bad_file"):
        UltrasoundDataset(rows, 16, on_bad_file="ignore", cache=False)


def test_empty_manifest(tmp_path):
    rows = pd.DataFrame({"name": [], "image": [], "mask": [], "label": []})
    dataset = UltrasoundDataset(rows, 8, with_masks=True)
    assert len(dataset) == 0 and dataset.images.shape == (0, 1, 8, 8) and dataset.cache_path is None
