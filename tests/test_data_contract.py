"""The data layer's contract (one manifest module, one decoder, no import circle) and the data bugs a new user hits."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import layouts
import numpy as np
import pandas as pd
import pytest
import torch
from layouts import ManifestModule
from PIL import Image

from usvl.data.bad_files import BadFilesError
from usvl.data.check import check_manifest, check_source
from usvl.data.cli import data_main
from usvl.data.sources import FolderDataModule, read_folder_manifest

DATA = Path(__file__).resolve().parents[1] / "usvl" / "data"
LAYERS = (
    ("dicom",),
    ("manifest", "decode", "bad_files", "dicom_seg"),
    ("splits", "duplicates", "dataset", "decode_cache", "transforms", "acquisition_augment"),
    ("datamodule",),
    ("sources.common", "sources.nextgen", "sources.busi", "sources.ddti", "sources.tn3k", "sources.prostate",
     "sources.folder", "sources.synthetic"),
    ("sources.registry", "sources", "captions", "descriptors"),
    ("check", "cli", ""),
)
"""The data package's layers, lowest first: a module may import its own layer's modules and lower layers only."""


def _module_imports() -> dict[str, set[str]]:
    """``usvl.data`` module -> the ``usvl.data`` modules it imports, in functions too (a lazy import hides a circle,
    it does not remove it); a module's own parent packages are left out."""
    graph = {}
    for path in DATA.rglob("*.py"):
        parts = path.relative_to(DATA).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = ".".join(parts[:-1])
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                targets.add(".".join(p for p in (base, node.module or "") if p))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("usvl.data"):
                targets.add(node.module.removeprefix("usvl.data").lstrip("."))
            elif isinstance(node, ast.Import):
                targets |= {a.name.removeprefix("usvl.data").lstrip(".") for a in node.names
                            if a.name.startswith("usvl.data")}
        parents = {".".join(parts[:i]) for i in range(len(parts))}
        graph[name] = targets - {name} - parents
    return graph


def test_the_data_package_imports_in_no_circle():
    graph = _module_imports()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import circle: " + " -> ".join((*path[path.index(module):], module))
        if module in done:
            return
        for target in graph.get(module, ()):
            visit(target, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_the_data_package_imports_only_downwards():
    level = {module: i for i, layer in enumerate(LAYERS) for module in layer}
    for module, targets in _module_imports().items():
        if module.startswith("synthetic"):
            continue  # the generator imports only itself (and the manifest's SPLITS)
        for target in targets - {"synthetic"}:
            if target.startswith("synthetic"):
                continue
            assert level[target] <= level[module], f"usvl.data.{module} imports usvl.data.{target}, a higher layer"


def test_manifest_and_decode_import_nothing_else_of_the_data_package():
    # decode reads DICOM through usvl.data.dicom, which itself imports nothing of the data package
    allowed = {"decode": ["from usvl.data.dicom import is_dicom_path, read_dicom_frame"]}
    for name in ("manifest", "decode", "bad_files", "dicom"):
        source = (Path(__file__).resolve().parents[1] / "usvl" / "data" / f"{name}.py").read_text()
        imports = [line for line in source.splitlines() if "usvl.data" in line and "import" in line]
        assert imports == allowed.get(name, []), (name, imports)


def test_datamodule_does_not_import_the_checker_or_the_sources():
    source = (Path(__file__).resolve().parents[1] / "usvl" / "data" / "datamodule.py").read_text()
    assert "usvl.data.check" not in source and "usvl.data.sources" not in source


# --------------------------------------------------------------------------------------------------------------------
# Bugs


def test_nextgen_without_the_dataset_option_names_it_and_lists_the_datasets(tmp_path, capsys):
    root, _ = layouts.write_nextgen(tmp_path / "release", dataset="TN3K")
    code = data_main(["check", "--source", "nextgen", "--root", str(root)])
    error = capsys.readouterr().err
    assert code == 2
    assert "--option dataset=" in error and "TN3K" in error and "positional argument" not in error


def test_labels_csv_with_an_image_column_is_read_and_the_column_named(tmp_path, caplog):
    root, _ = layouts.write_folder(tmp_path / "folder", with_splits=False)
    table = pd.read_csv(root / "labels.csv").rename(columns={"name": "image"})
    table[["image", "label"]].to_csv(root / "labels.csv", index=False)
    with caplog.at_level(logging.INFO, logger="usvl.data.sources.folder"):
        manifest = read_folder_manifest(root, class_names=["benign", "malignant"])
    assert manifest.set_index("name").loc["case_001.png", "label"] == 1
    assert (manifest["label"] >= 0).all() and "'image'" in caplog.text


def test_csv_manifest_with_label_names_derives_the_classes(tmp_path):
    root, _ = layouts.write_folder(tmp_path / "folder")
    labels = pd.read_csv(root / "labels.csv")
    csv_file = tmp_path / "manifest.csv"
    pd.DataFrame({"image": [f"folder/images/{n}" for n in labels["name"]], "label": labels["label"]}).to_csv(
        csv_file, index=False)
    report = check_source("folder", str(csv_file), threads=1)
    assert report.class_names == ["benign", "malignant"]
    assert not report.names("unknown-label") and report.ok
    assert "derived from the labels" in report.format()


def test_symlink_loop_in_images_is_named_refused_or_skipped_and_counted(tmp_path, caplog):
    root, _ = layouts.write_folder(tmp_path / "folder", count=8)
    images = root / "images"
    (images / "loop_a.png").symlink_to(images / "loop_b.png")
    (images / "loop_b.png").symlink_to(images / "loop_a.png")
    with (root / "labels.csv").open("a", encoding="utf-8") as handle:
        handle.write("loop_a.png,benign,train,p50\n")
    with caplog.at_level(logging.WARNING, logger="usvl.data.sources"):
        manifest = read_folder_manifest(root, class_names=["benign", "malignant"])
    assert len(manifest) == 8 and "loop_a.png" not in set(manifest["name"])
    assert "loop_a.png" in caplog.text and "symlink loop" in caplog.text
    report = check_manifest(manifest, class_names=["benign", "malignant"], threads=1)
    assert report.names("skipped-file") == {"loop_a.png", "loop_b.png"}
    assert "skipped-file 2" in report.format()
    with pytest.raises(BadFilesError, match=r"loop_a\.png.*symlink loop"):
        FolderDataModule(root=str(root), image_size=32, batch_size=2, decode_cache=False).prepare_manifest()
    module = FolderDataModule(root=str(root), image_size=32, batch_size=2, decode_cache=False, on_bad_file="skip")
    module.prepare_manifest()
    assert {name for name, _ in module.skipped} == {"loop_a.png", "loop_b.png"}


def test_ddti_without_labels_gives_one_error_pointing_to_segmentation(tmp_path):
    root, _ = layouts.write_ddti(tmp_path / "ddti")
    report = check_source("ddti", str(root), threads=1)
    assert [p.kind for p in report.errors] == ["no-labels"]
    assert "--task segmentation" in report.errors[0].detail
    assert check_source("ddti", str(root), task="segmentation", threads=1).ok


def test_a_test_only_dataset_sets_up_for_test_but_not_for_fit(tmp_path):
    root, _ = layouts.write_folder(tmp_path / "folder", count=8)
    labels = pd.read_csv(root / "labels.csv").assign(split="test")
    labels.to_csv(root / "labels.csv", index=False)
    module = FolderDataModule(root=str(root), image_size=32, batch_size=2, decode_cache=False)
    module.setup("test")
    assert len(module.datasets["test"]) == 8 and "train" not in module.datasets
    with pytest.raises(ValueError, match="train split is empty"):
        FolderDataModule(root=str(root), image_size=32, batch_size=2, decode_cache=False).setup("fit")


def test_a_folder_without_splits_is_all_test_for_test_and_split_for_fit(tmp_path):
    root, _ = layouts.write_folder(tmp_path / "folder", count=12, with_splits=False)
    tested = FolderDataModule(root=str(root), image_size=32, batch_size=2, decode_cache=False)
    tested.setup("test")
    assert len(tested.datasets["test"]) == 12
    fitted = FolderDataModule(root=str(root), image_size=32, batch_size=2, decode_cache=False,
                              split_fractions=(0.5, 0.25, 0.25))
    fitted.setup("fit")
    assert set(fitted.manifest["split"]) == {"train", "val", "test"}
    assigned = FolderDataModule(root=str(root), image_size=32, batch_size=2, decode_cache=False,
                                eval_unsplit="assign", split_fractions=(0.5, 0.25, 0.25))
    assigned.setup("test")
    assert len(assigned.datasets["test"]) < 12


def _speckle(seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(coarse, dtype=np.float32) + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)


def _duplicated_manifest(folder: Path, pairs: int = 24, singles: int = 24) -> tuple[pd.DataFrame, list[set[str]]]:
    folder.mkdir(parents=True, exist_ok=True)
    rows, groups = [], []
    for i in range(pairs + singles):
        image = _speckle(i)
        names = [f"img{i:03d}.png"] + ([f"copy{i:03d}.png"] if i < pairs else [])
        for name in names:
            Image.fromarray(image).save(folder / name)
            rows.append({"name": name, "image": str(folder / name), "label": i % 2})
        if i < pairs:
            groups.append(set(names))
    return pd.DataFrame(rows), groups


def test_duplicate_groups_are_one_patient_when_splits_are_assigned(tmp_path, caplog):
    manifest, groups = _duplicated_manifest(tmp_path / "images")
    module = ManifestModule(manifest, image_size=32, batch_size=4, decode_cache=False,
                            split_fractions=(0.5, 0.25, 0.25))
    with caplog.at_level(logging.INFO, logger="usvl.data.datamodule"):
        assigned = module.prepare_manifest().set_index("name")["split"]
    for group in groups:
        assert len({assigned[name] for name in group}) == 1, group
    assert set(assigned) == {"train", "val", "test"}
    assert "24 groups" in caplog.text and "merged into 24 patient groups" in caplog.text
    assert module.split_manifest["patient"].isna().all()  # the source's patient ids are kept
    module.save_splits(tmp_path / "run")
    written = pd.read_csv(tmp_path / "run" / "duplicate_groups.csv")
    assert written["group"].nunique() == 24 and len(written) == 48


def test_duplicates_across_given_splits_are_still_warned_about(tmp_path, caplog):
    manifest, groups = _duplicated_manifest(tmp_path / "images", pairs=2, singles=6)
    first = sorted(groups[0])
    manifest["split"] = (["train", "val", "test"] * len(manifest))[:len(manifest)]
    manifest.loc[manifest["name"] == first[0], "split"] = "train"
    manifest.loc[manifest["name"] == first[1], "split"] = "test"
    module = ManifestModule(manifest, image_size=32, batch_size=2, decode_cache=False)
    with caplog.at_level(logging.WARNING, logger="usvl.data.datamodule"):
        module.setup()
    assert "duplicate groups span the splits" in caplog.text and first[0] in caplog.text
    assert module.duplicate_patients.empty


def test_usvl_test_on_an_external_test_only_folder_uses_the_checkpoint_classes(tmp_path, thyroid_cls_fit):
    from usvl.cli import main

    run, checkpoint = thyroid_cls_fit.run, thyroid_cls_fit.checkpoint  # the session's smoke fit
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["usvl"]["class_names"] == [
        "benign", "malignant"]
    external, _ = layouts.write_folder(tmp_path / "external", count=12, with_splits=False)
    main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(checkpoint),
          "--data", "usvl.data.FolderDataModule", "--data.root", str(external),
          "--data.class_names", "[first, second]",  # wrong names: the checkpoint's must win, or every label is bad
          "--trainer.logger.init_args.save_dir", str(tmp_path / "tested")])
    tested = next((tmp_path / "tested").rglob("test_metrics.json"))
    metrics = json.loads(tested.read_text())
    assert metrics["class_names"] == ["benign", "malignant"] and "test/auroc" in metrics["metrics"]
    splits = pd.read_csv(tested.parent / "splits.csv")
    assert len(splits) == 12 and set(splits["split"]) == {"test"}


def test_blank_images_do_not_join_patients(tmp_path):
    manifest, _ = _duplicated_manifest(tmp_path / "images", pairs=0, singles=12)
    blank = np.zeros((48, 48), dtype=np.uint8)
    for i in range(12):
        Image.fromarray(blank).save(tmp_path / "images" / f"blank{i:03d}.png")
    manifest = pd.concat([manifest, pd.DataFrame({"name": [f"blank{i:03d}.png" for i in range(12)],
                                                  "image": [str(tmp_path / "images" / f"blank{i:03d}.png")
                                                            for i in range(12)],
                                                  "label": [i % 2 for i in range(12)],
                                                  "patient": [f"p{i}" for i in range(12)]})], ignore_index=True)
    module = ManifestModule(manifest, image_size=32, batch_size=4, decode_cache=False,
                            split_fractions=(0.5, 0.25, 0.25))
    splits = module.prepare_manifest().set_index("name")["split"]
    assert module.duplicate_patients.empty
    assert len({splits[f"blank{i:03d}.png"] for i in range(12)}) > 1
