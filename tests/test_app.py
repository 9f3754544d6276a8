"""``usvl app``: the browser page of a trained run gives, for a dropped image, exactly what ``usvl predict`` writes.

The session's smoke fits of ``configs/thyroid_cls.yaml`` (calibrated classifier) and ``configs/breast_seg.yaml``
(tests/smoke_runs.py) are loaded once each by :class:`~usvl.app.predictor.AppPredictor`; a generated image is
predicted by the app and by ``usvl predict`` on a folder holding only that image, and rows, overlays, masks and the
calibration record must match byte for byte. The browser test serves the page on 127.0.0.1 (a free port), drives
headless Debian Chromium with Selenium (``/usr/bin/chromedriver``, no browser download), uploads the image, waits for
the result, checks the shown class and the shown overlay against ``usvl predict``'s, and saves a screenshot per task
under ``$USVL_ARTIFACTS`` (default ``artifacts/`` at the repository root, git-ignored). It skips where Chromium or
chromedriver is missing, except under CI (``CI=true``), whose ``.ci/run`` installs them.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from usvl.app.predictor import AppPredictor, AppResult, find_run_config, safe_name
from usvl.cli import main, run_lightning

needs_gradio = pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                                  reason="the page needs the app extra (gradio); make install has it")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900")
"""Headless Chromium on a closed network: without these it stalls reaching out (updates, sync, QUIC)."""
IMAGE_NAME = "nodule 1.png"
"""The uploaded image's name (a space in it, as users' files have)."""


def artifacts_dir() -> Path:
    """Where the browser test puts its screenshots: ``$USVL_ARTIFACTS`` or ``artifacts/`` at the repository root."""
    folder = Path(os.environ.get("USVL_ARTIFACTS") or REPO / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """A folder with ``images/`` holding one generated B-mode-like image: a dark blob in speckle."""
    root = tmp_path_factory.mktemp("app-input")
    (root / "images").mkdir()
    rng = np.random.default_rng(3)
    height, width = 180, 240
    rows, cols = np.mgrid[:height, :width]
    speckle = rng.gamma(2.0, 45.0, (height, width))
    blob = ((rows - 90) / 40.0) ** 2 + ((cols - 120) / 55.0) ** 2 < 1
    pixels = np.clip(np.where(blob, speckle * 0.35, speckle), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(root / "images" / IMAGE_NAME)
    return root


def usvl_predict(fit, folder: Path, out: Path, *extra: str) -> tuple[Path, list[dict[str, str]]]:
    """``usvl predict --config <run>/config.yaml --ckpt_path <ckpt> --data usvl.data.FolderDataModule ...``."""
    run_lightning(["predict", "--config", str(fit.config), "--ckpt_path", str(fit.checkpoint), "--data",
                   "usvl.data.FolderDataModule", "--data.root", str(folder),
                   "--trainer.logger.init_args.save_dir", str(out), *extra])
    (predictions,) = [p for p in out.rglob("predictions*") if p.is_dir()]
    with (predictions / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        return predictions, list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def runs(thyroid_cls_fit, breast_seg_fit, image_folder, tmp_path_factory):
    """Per task: the app's predictor (model loaded once) and ``usvl predict``'s folder and rows for the image.

    Both get the same further ``usvl predict`` arguments: for segmentation a pixel threshold the smoke model's
    probabilities reach, so the overlays compared hold a mask contour.
    """
    loaded = {}
    for task, fit in (("classification", thyroid_cls_fit), ("segmentation", breast_seg_fit)):
        extra = ("--model.init_args.threshold", "0.2") if task == "segmentation" else ()
        predictor = AppPredictor(fit.checkpoint, workdir=tmp_path_factory.mktemp(f"app-{task}"), cli_args=extra)
        folder, rows = usvl_predict(fit, image_folder, tmp_path_factory.mktemp(f"predict-{task}"), *extra)
        loaded[task] = (predictor, folder, rows)
    return loaded


def pixels(source: Path | bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(source) if isinstance(source, bytes) else source).convert("RGB"))


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_app_gives_what_usvl_predict_writes_for_the_image(runs, image_folder, task, tmp_path):
    predictor, folder, rows = runs[task]
    assert predictor.task == task
    upload = tmp_path / "gradio-upload-name.png"  # the app names the rows by the user's file name, not the temp file
    shutil.copy(image_folder / "images" / IMAGE_NAME, upload)
    for _ in range(2):  # a second request gives the same (nothing carried over from the first)
        result = predictor.predict(upload, name=IMAGE_NAME)
        assert result.rows == rows
        assert [p.relative_to(result.folder) for p in result.overlays] == [Path("overlays/nodule 1.png")]
        assert (result.overlays[0]).read_bytes() == (folder / "overlays" / "nodule 1.png").read_bytes()
        if task == "segmentation":
            assert int(rows[0]["lesion_area_px"]) > 0  # a contour on the overlay
            assert [p.name for p in result.masks] == ["nodule 1.png"]
            assert result.masks[0].read_bytes() == (folder / "nodule 1.png").read_bytes()
            assert set(result.probabilities()) == {"lesion"}
        else:
            assert result.masks == []
            assert json.loads((folder / "calibration.json").read_text()) == result.records["calibration.json"]
            assert list(result.probabilities()) == predictor.class_names
            assert result.rows[0]["prediction"] in predictor.class_names
    payload = json.loads(result.result_json.read_text())
    assert payload["file"] == IMAGE_NAME and payload["model"]["task"] == task
    first = payload["predictions"][0]
    assert first["name"] == IMAGE_NAME and first["prediction"] == rows[0]["prediction"]
    assert all(isinstance(first[key], float) for key in first if key.startswith("p_"))  # numbers as numbers
    assert result.result_json in result.downloads() and all(path.is_file() for path in result.downloads())


@needs_gradio
def test_the_page_shows_a_clear_message_for_a_wrong_or_unreadable_file(runs, tmp_path):
    from usvl.app.ui import predict_upload  # Gradio is imported by the tests that draw the page only

    predictor = runs["classification"][0]
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    status, *cleared = predict_upload(predictor, str(text))
    assert status.startswith("**Error:**") and ".txt is not an image type" in status and "PNG, JPEG or DICOM" in status
    assert cleared[:4] == ["", None, "", None] and cleared[5] is None and not cleared[4].visible
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    status, *_ = predict_upload(predictor, str(broken))
    assert status.startswith("**Error:**") and "broken.png" in status and "Traceback" not in status
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert "empty" in predict_upload(predictor, str(empty))[0]


def test_the_page_reads_descriptor_columns_sentence_and_json_files_generically(tmp_path):
    folder = tmp_path / "predictions"
    folder.mkdir()
    (folder / "nodule.json").write_text(json.dumps({"composition": "solid"}))
    row = {"name": "nodule.png", "p_benign": "0.200000", "p_malignant": "0.800000", "prediction": "malignant",
           "threshold": "0.500000", "composition": "solid", "tr_level": "TR5",
           "p_composition_solid": "0.900000", "lexicon_sentence": "Solid, hypoechoic nodule: TR5, 10 points"}
    result = AppResult(name="nodule.png", task="classification", rows=[row], folder=folder,
                       records={"nodule.json": {"composition": "solid"}, "calibration.json": {}},
                       result_json=tmp_path / "r.json", probability_columns=["p_benign", "p_malignant"])
    assert result.probabilities() == {"benign": 0.2, "malignant": 0.8}
    assert result.sentence() == "Solid, hypoechoic nodule: TR5, 10 points"
    assert result.details() == {"composition": "solid", "tr_level": "TR5", "p_composition_solid": "0.900000"}
    assert result.downloads() == [tmp_path / "r.json", folder / "nodule.json"]


def test_usvl_app_finds_the_run_config_and_names_what_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "--help"])
    assert exit_info.value.code == 0 and "--ckpt_path" in capsys.readouterr().out
    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = run / "checkpoints" / "best.ckpt"
    with pytest.raises(FileNotFoundError, match="not found"):
        find_run_config(checkpoint)
    checkpoint.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="--config"):
        find_run_config(checkpoint)
    (run / "config.yaml").write_text("model: {}\n")
    assert find_run_config(checkpoint) == run / "config.yaml"
    assert safe_name("C:\\scans\\a/b?.png") == "b_.png" and safe_name("../..") == "upload"


# --- the browser test ---------------------------------------------------------------------------------------------


def browser_paths() -> tuple[str, str] | None:
    """Chromium and chromedriver (``USVL_CHROMIUM`` / ``USVL_CHROMEDRIVER`` or on PATH), None when one is missing."""
    chromium = shutil.which(os.environ.get("USVL_CHROMIUM") or "chromium") or shutil.which("chromium-browser")
    driver = shutil.which(os.environ.get("USVL_CHROMEDRIVER") or "chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium driven by Selenium, or a skip (a failure under CI, which installs Chromium)."""
    paths = browser_paths()
    if paths is None:
        reason = "headless Chromium not installed: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(reason)
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=paths[1]))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def save_full_page(driver, path: Path) -> Path:
    """A screenshot of the whole page (the viewport stretched to the content's height) as a PNG."""
    height = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]["height"]
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": min(int(height) + 16, 3000),
                                                                   "deviceScaleFactor": 1, "mobile": False})
    try:
        assert driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path


@needs_gradio
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_browser_upload_shows_usvl_predicts_class_and_overlay(browser, runs, image_folder, task):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from usvl.app.ui import serve

    predictor, folder, rows = runs[task]
    started = time.perf_counter()
    page = serve(predictor, host="127.0.0.1", port=0, block=False)  # a free port
    try:
        assert page.local_url.startswith("http://127.0.0.1:")
        browser.get(page.local_url)
        upload = WebDriverWait(browser, 60).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#usvl-upload input[type=file]"))
        upload.send_keys(str(image_folder / "images" / IMAGE_NAME))

        def shown(driver):
            text = driver.find_element(By.ID, "usvl-prediction").text
            status = driver.find_element(By.ID, "usvl-status").text
            assert "Error" not in status, status
            images = driver.find_elements(By.CSS_SELECTOR, "#usvl-overlay img")
            return text if "Prediction:" in text and images and images[0].get_attribute("src") else False

        headline = WebDriverWait(browser, 90).until(shown)
        assert headline.splitlines()[0] == f"Prediction: {rows[0]['prediction']}"  # the class usvl predict wrote
        source = browser.find_element(By.CSS_SELECTOR, "#usvl-overlay img").get_attribute("src")
        with urllib.request.urlopen(source, timeout=30) as response:  # noqa: S310  (the app on 127.0.0.1)
            shown_overlay = response.read()
        np.testing.assert_array_equal(pixels(shown_overlay), pixels(folder / "overlays" / "nodule 1.png"))
        assert "Error" not in browser.find_element(By.ID, "usvl-status").text
        screenshot = save_full_page(browser, artifacts_dir() / f"app-{task}.png")
        assert Image.open(screenshot).size[0] >= 1000
    finally:
        page.close()
    print(f"browser test ({task}): {time.perf_counter() - started:.1f} s, screenshot {screenshot}")
