"""Bad input through ``usvl fit``: a corpus of bad and odd-but-valid files in a plain folder, under each policy.

The corpus (:func:`write_corpus`, 48 px images in ``images/`` + ``masks/`` + ``labels.csv`` with given splits):

* odd but valid, decoded and trained on under either policy: a 16-bit image, an RGBA image, a CMYK JPEG, a
  12-megapixel JPEG (with a tenth-size mask of its aspect ratio), a non-ASCII name, a {0, 1} mask and a mask with
  grey (anti-aliased) edges;
* bad for both tasks: a truncated PNG, a zero-byte PNG, a text file named ``.png``, a listed image that is missing
  and an image-named symlink loop; bad for classification only: an unknown label; for segmentation only: a mask
  whose aspect ratio is not its image's;
* a duplicate across splits (a byte copy of a training image in the test split): leakage, not a bad file. Both
  copies are named in a warning and in the run's ``cross_split_duplicates.csv``, and both are kept.

``on_bad_file: error`` stops ``usvl fit`` before the first training step with one error naming every bad file of a
phase: first those the manifest shows (missing, unknown label, symlink loop), then, once those are gone, those
that cannot be decoded or whose mask does not fit. ``skip`` trains on the rest, and the run folder's
``skipped_files.csv`` names every bad file once and no odd-but-valid one.

Training decodes every image at setup, in the main process (loader workers only index the decoded arrays), so a
bad file can never fail inside a training worker; the one lazy decoder is ``predict``'s streaming dataset, whose
worker errors still name the file.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from layouts import lesion
from PIL import Image, ImageFilter
from shipped_configs import CONFIGS

from usvl.cli import main, run_lightning
from usvl.data import BadFilesError, FolderDataModule
from usvl.tasks import ClassificationTask, SegmentationTask

SIDE = 48
CLASSES = ("benign", "malignant")
NON_ASCII = "échographie_超声.png"
ODD = {"image_16bit": "deep16.png", "rgba": "rgba.png", "cmyk": "cmyk.jpg", "twelve_mp": "huge.jpg",
       "non_ascii": NON_ASCII, "mask_01": "mask01.png", "grey_mask": "greymask.png"}
"""Odd but valid files: kind -> image name."""
MANIFEST_BAD = {"missing_file": "missing.png", "symlink_loop": "loop.png"}
"""Bad for both tasks, found from the manifest (before decoding)."""
DECODE_BAD = {"truncated": "truncated.png", "zero_bytes": "empty.png", "text_png": "text.png"}
"""Bad for both tasks, found by decoding."""
UNKNOWN_LABEL = "unlabelled.png"
MASK_MISMATCH = "mismatch.png"
ORIGINAL, COPY = "case00.png", "copy_of_case00.png"
SPLITS = {"truncated.png": "test", "empty.png": "val", "text.png": "train", "missing.png": "train",
          MASK_MISMATCH: "train", UNKNOWN_LABEL: "train", NON_ASCII: "val", "cmyk.jpg": "test", COPY: "test"}
"""Split of the images not in train; the good cases are split train, train, train, val, test, ..."""


def expected_bad(task: str, manifest: bool = True, decode: bool = True) -> dict[str, str | None]:
    """Bad file name -> its split (None for the symlink loop, which never gets one) for ``task``."""
    names = [*(MANIFEST_BAD.values() if manifest else ()), *(DECODE_BAD.values() if decode else ())]
    if task == "classification" and manifest:
        names.append(UNKNOWN_LABEL)
    if task == "segmentation" and decode:
        names.append(MASK_MISMATCH)
    return {name: None if name == MANIFEST_BAD["symlink_loop"] else SPLITS.get(name, "train") for name in names}


def save_pair(root: Path, name: str, seed: int, image: Image.Image | None = None) -> None:
    """A lesion image (or ``image``) under ``images/`` and its 0/255 mask under ``masks/`` (PNG, same stem)."""
    grey, mask = lesion(seed, ("benign", "malignant")[seed % 2], SIDE)
    (image or Image.fromarray(grey)).save(root / "images" / name)
    Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{Path(name).stem}.png")


def write_corpus(root: Path, manifest_bad: bool = True) -> Path:
    """Write the corpus (see the module docstring); without ``manifest_bad`` no missing file and no symlink loop."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []

    def listed(name: str, seed: int, label: str | None = None) -> None:
        split = SPLITS.get(name) or ("train", "train", "train", "val", "test")[seed % 5]
        rows.append((name, label or CLASSES[seed % 2], split))

    for seed in range(10):
        save_pair(root, f"case{seed:02d}.png", seed)
        listed(f"case{seed:02d}.png", seed)
    grey = {seed: lesion(seed, CLASSES[seed % 2], SIDE)[0] for seed in range(20, 27)}
    save_pair(root, ODD["image_16bit"], 20, Image.fromarray(grey[20].astype(np.uint16) * 257))
    alpha = np.full((SIDE, SIDE), 255, np.uint8)
    alpha[:, : SIDE // 4] = 128
    save_pair(root, ODD["rgba"], 21, Image.fromarray(np.dstack([grey[21]] * 3 + [alpha]), "RGBA"))
    save_pair(root, ODD["cmyk"], 22, Image.fromarray(grey[22]).convert("CMYK"))
    save_pair(root, ODD["twelve_mp"], 23, Image.fromarray(grey[23]).resize((4000, 3000), Image.BILINEAR))
    Image.open(root / "masks" / "huge.png").resize((400, 300), Image.NEAREST).save(root / "masks" / "huge.png")
    save_pair(root, ODD["non_ascii"], 24)
    save_pair(root, ODD["mask_01"], 25)
    Image.fromarray(lesion(25, "malignant", SIDE)[1].astype(np.uint8)).save(root / "masks" / "mask01.png")
    save_pair(root, ODD["grey_mask"], 26)
    blurred = Image.open(root / "masks" / "greymask.png").filter(ImageFilter.GaussianBlur(1.5))
    blurred.save(root / "masks" / "greymask.png")
    for seed, name in zip(range(20, 27), ODD.values(), strict=True):
        listed(name, seed)
    for seed, name in enumerate(DECODE_BAD.values(), start=30):
        save_pair(root, name, seed)
        listed(name, seed)
    data = (root / "images" / "truncated.png").read_bytes()
    (root / "images" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "images" / "empty.png").write_bytes(b"")
    (root / "images" / "text.png").write_text("patient notes, not an image\n", encoding="utf-8")
    save_pair(root, UNKNOWN_LABEL, 40)
    listed(UNKNOWN_LABEL, 40, label="indeterminate")
    save_pair(root, MASK_MISMATCH, 41)
    Image.new("L", (SIDE, SIDE // 2), 255).save(root / "masks" / "mismatch.png")
    listed(MASK_MISMATCH, 41)
    shutil.copyfile(root / "images" / ORIGINAL, root / "images" / COPY)
    shutil.copyfile(root / "masks" / ORIGINAL, root / "masks" / COPY)
    listed(COPY, 0)
    if manifest_bad:
        save_pair(root, "missing.png", 42)
        (root / "images" / "missing.png").unlink()
        listed("missing.png", 42)
        (root / "images" / "loop.png").symlink_to(root / "images" / "loop.png")
    with (root / "labels.csv").open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([("name", "label", "split"), *rows])
    return root


def fit_args(task: str, root: Path, runs: Path, policy: str, workers: int = 0) -> list[str]:
    """``usvl fit`` of the tiny ViT-CLIP (64 px) on the corpus folder: one batch of each split, one epoch."""
    if task == "classification":
        model = ["--config", str(CONFIGS / "tiny_vit_cls.yaml"), "--calibration.enabled", "false",
                 "--calibration.diagram", "false"]
    else:
        encoder = {"class_path": "usvl.models.encoders.TinyViTCLIP",
                   "init_args": {"embed_dim": 32, "img_size": 64, "feature_taps": [1, 2, 3]}}
        adapter = {"class_path": "usvl.models.adapters.MonaAdapter", "init_args": {"bottleneck": 8, "points": None}}
        model = ["--config", str(CONFIGS / "breast_seg.yaml"), "--model.init_args.encoder", json.dumps(encoder),
                 "--model.init_args.adapter", json.dumps(adapter)]
    return ["fit", *model, "--config", str(CONFIGS / "trainer" / "smoke.yaml"),
            "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "1", "--trainer.logger.init_args.save_dir", str(runs),
            "--data", "usvl.data.FolderDataModule", "--data.root", str(root), "--data.task", task,
            "--data.class_names", f"[{', '.join(CLASSES)}]", "--data.image_size", "64", "--data.batch_size", "4",
            "--data.num_workers", str(workers), "--data.on_bad_file", policy]


@pytest.fixture
def training_steps(monkeypatch) -> list[int]:
    """Counts the training steps of both tasks."""
    steps: list[int] = []
    for task in (ClassificationTask, SegmentationTask):
        original = task.training_step

        def counted(self, *args, _original=original, **kwargs):
            steps.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(task, "training_step", counted)
    return steps


def test_error_names_every_missing_mislabelled_or_unlinked_file_before_the_first_step(tmp_path, training_steps,
                                                                                     capsys, monkeypatch):
    root = write_corpus(tmp_path / "corpus")
    monkeypatch.delenv("USVL_DEBUG", raising=False)
    assert main(fit_args("classification", root, tmp_path / "runs", "error")) == 2  # the `usvl` command's path
    message = capsys.readouterr().err
    assert message.startswith("usvl: error: ") and "Traceback" not in message
    for name in expected_bad("classification", decode=False):
        assert name in message, (name, message)
    assert "indeterminate" in message and "symlink loop" in message and "on_bad_file" in message
    assert not any(name in message for name in DECODE_BAD.values())  # those come next, once these are gone
    assert training_steps == []


def test_error_names_every_undecodable_file_before_the_first_step_with_workers(tmp_path, training_steps):
    root = write_corpus(tmp_path / "corpus", manifest_bad=False)
    with pytest.raises(BadFilesError) as error:
        run_lightning(fit_args("segmentation", root, tmp_path / "runs", "error", workers=2))
    message = str(error.value)
    for name, split in expected_bad("segmentation", manifest=False).items():
        assert f"{name} [{split}]" in message, (name, message)
    assert "truncated.png [test]" in message  # the test split is decoded before training too
    assert "mismatch.png" in message and "aspect ratios differ" in message and "on_bad_file" in message
    assert training_steps == []


def read_skip_list(run: Path) -> list[dict[str, str]]:
    with (run / "skipped_files.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(("task", "workers"), [("classification", 0), ("segmentation", 2)])
def test_skip_trains_on_the_rest_and_lists_every_bad_file_once_in_the_run(tmp_path, caplog, task, workers):
    root = write_corpus(tmp_path / "corpus")
    with caplog.at_level(logging.WARNING):
        cli = run_lightning(fit_args(task, root, tmp_path / "runs", "skip", workers))
    assert cli.trainer.global_step > 0
    run = Path(cli.trainer.log_dir)
    rows = read_skip_list(run)
    bad = expected_bad(task)
    assert sorted(row["name"] for row in rows) == sorted(bad)  # every bad file, each once
    assert {row["name"]: row["split"] or None for row in rows} == bad
    assert all(row["reason"] for row in rows)
    assert json.loads((run / "test_metrics.json").read_text())["skipped_files"] == len(bad)
    assert f"{len(bad)} images skipped in all" in caplog.text
    data = cli.datamodule
    kept = {name: split for split, dataset in data.datasets.items() for name in dataset.names}
    for name in ODD.values():
        assert name in kept, name
        dataset = data.datasets[kept[name]]
        index = dataset.names.index(name)
        assert dataset.images[index].float().std() > 5, name  # decoded content, not a blank
        if task == "segmentation":
            assert 0 < int(dataset.masks[index].sum()) < 64 * 64 // 2, name
    assert (MASK_MISMATCH if task == "classification" else UNKNOWN_LABEL) in kept  # bad for the other task only
    assert kept[ORIGINAL] == "train" and kept[COPY] == "test"
    duplicates = (run / "cross_split_duplicates.csv").read_text(encoding="utf-8")
    assert ORIGINAL in duplicates and COPY in duplicates
    assert "duplicate groups span the splits" in caplog.text and COPY in caplog.text


def test_training_never_decodes_in_a_worker_and_predict_workers_name_the_file(tmp_path):
    root = write_corpus(tmp_path / "corpus", manifest_bad=False)
    module = FolderDataModule(root=str(root), class_names=CLASSES, image_size=32, batch_size=4, num_workers=2,
                              on_bad_file="skip", decode_cache=False)
    module.setup("fit")
    train_file = root / "images" / ORIGINAL
    train_file.write_bytes(train_file.read_bytes()[:50])  # goes bad after setup: training holds decoded arrays
    assert sum(len(batch["name"]) for batch in module.train_dataloader()) == len(module.datasets["train"]) // 4 * 4
    new = tmp_path / "new"
    (new / "images").mkdir(parents=True)
    for name in ("case01.png", "case02.png", "cmyk.jpg", NON_ASCII):
        shutil.copyfile(root / "images" / name, new / "images" / name)
    predicting = FolderDataModule(root=str(new), image_size=32, batch_size=2, num_workers=2, decode_cache=False)
    predicting.setup("predict")
    bad = new / "images" / "cmyk.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # goes bad after setup: predict decodes in its workers
    with pytest.raises(ValueError, match=r"DataLoader worker(.|\n)*cmyk\.jpg"):
        list(predicting.predict_dataloader())
