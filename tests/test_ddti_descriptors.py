"""DDTI's XML descriptor fields as ACR TI-RADS lexicon targets: the mapping, the reader, the data module, a tiny fit."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import layouts
import pytest

from usvl.data.descriptors import DDTIDescriptorDataModule, NoDescriptorsError
from usvl.data.sources.ddti import (
    DDTI_FIELDS,
    DDTI_VALUES,
    ddti_descriptor_value,
    read_ddti_descriptors,
    read_ddti_manifest,
)
from usvl.lexicon import TIRADS

REPO = Path(__file__).resolve().parents[1]

LISTED = [
    # XML element, the release's text, the ACR TI-RADS value
    ("composition", "solid", "solid"),
    ("composition", "predominantly solid", "mixed"),
    ("composition", "predominantly cystic", "mixed"),
    ("composition", "cystic", "cystic"),
    ("composition", "spongiform", "spongiform"),
    ("echogenicity", "hyperechogenicity", "hyperechoic"),
    ("echogenicity", "isoechogenicity", "isoechoic"),
    ("echogenicity", "hypoechogenicity", "hypoechoic"),
    ("echogenicity", "marked hypoechogenicity", "very_hypoechoic"),
    ("margins", "well defined", "smooth"),
    ("margins", "ill defined", "ill_defined"),
    ("margins", "ill- defined", "ill_defined"),
    ("margins", "microlobulated", "lobulated_irregular"),
    ("margins", "macrolobulated", "lobulated_irregular"),
    ("margins", "spiculated", "lobulated_irregular"),
    ("calcifications", "non", "none"),
    ("calcifications", "none", "none"),
    ("calcifications", "microcalcification", "punctate"),
    ("calcifications", "microcalcifications", "punctate"),
    ("calcifications", "macrocalcification", "macrocalcification"),
    ("calcifications", "macrocalcifications", "macrocalcification"),
]

CASES = {
    # image -> its case's descriptors (tests/layouts.py DDTI_FIELDS, mapped by hand)
    "1_1.jpg": {"composition": "solid", "echogenicity": "hypoechoic", "margin": "smooth", "echogenic_foci": "none"},
    "2_1.jpg": {"composition": "mixed", "echogenicity": "isoechoic", "margin": "ill_defined",
                "echogenic_foci": "punctate"},
    "4_1.jpg": {"composition": "spongiform", "echogenicity": "very_hypoechoic", "margin": "lobulated_irregular",
                "echogenic_foci": "macrocalcification"},
    "6_1.jpg": {"composition": "solid", "echogenicity": "very_hypoechoic", "margin": "ill_defined",
                "echogenic_foci": "macrocalcification"},
    "7_1.jpg": {"echogenicity": "isoechoic", "margin": "smooth", "echogenic_foci": "none"},  # composition "dense"
    "8_1.jpg": {"composition": "solid", "margin": "smooth", "echogenic_foci": "none"},  # empty echogenicity
}


@pytest.mark.parametrize("element, text, expected", LISTED)
def test_every_listed_ddti_value_maps_to_its_acr_tirads_value(element, text, expected):
    assert ddti_descriptor_value(element, text) == expected
    assert ddti_descriptor_value(element, f"  {text.upper().replace(' ', '  ')} ") == expected
    assert ddti_descriptor_value(element, text.replace(" ", "-")) == expected


def test_the_mapping_holds_the_listed_values_only_and_speaks_the_tirads_vocabulary():
    assert {(element, text) for element, table in DDTI_VALUES.items() for text in table} == \
        {(element, text) for element, text, _ in LISTED if text != "ill- defined"}
    for element, table in DDTI_VALUES.items():
        for value in table.values():
            TIRADS.parse(DDTI_FIELDS[element], value)  # raises outside the vocabulary
    assert set(DDTI_FIELDS.values()) == set(TIRADS.descriptors) - {"shape"}
    assert ddti_descriptor_value("composition", "dense") is None
    assert ddti_descriptor_value("echogenicity", "") is None


def test_descriptors_by_image_name_every_image_of_a_case_the_same(tmp_path, usvl_cache):
    root, _ = layouts.write_ddti_xml(tmp_path / "ddti")
    found = read_ddti_descriptors(root)
    assert set(found) == set(read_ddti_manifest(root, version="original")["name"])
    assert found["2_1.jpg"] == found["2_2.jpg"] == CASES["2_1.jpg"]
    for name, expected in CASES.items():
        assert found[name] == expected, name
    assert not any("shape" in values for values in found.values())
    assert read_ddti_descriptors(Path(root) / "DDTI") == found  # the folder of the XML files works as root too


def test_unknown_values_are_skipped_in_one_counted_warning_naming_the_xml_files(tmp_path, caplog):
    root, _ = layouts.write_ddti_xml(tmp_path / "ddti")
    folder = Path(root) / "DDTI"
    text = (folder / "3.xml").read_text(encoding="utf-8")
    (folder / "3.xml").write_text(text.replace("<composition>cystic", "<composition>Dense")
                                  .replace("<margins>microlobulated", "<margins>irregular"), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="usvl.data.sources.ddti"):
        found = read_ddti_descriptors(root)
    warnings = [r for r in caplog.records if r.name == "usvl.data.sources.ddti"]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    message = warnings[0].getMessage()
    assert "3 XML value(s)" in message
    assert "composition 'dense': 2 (3.xml, 7.xml)" in message and "margins 'irregular': 1 (3.xml)" in message
    assert "8.xml" not in message  # an empty field is missing, not unknown
    assert "composition" not in found["3_1.jpg"] and "margin" not in found["3_1.jpg"]
    assert found["3_1.jpg"] == {"echogenicity": "hyperechoic", "echogenic_foci": "none"}


def test_processed_release_needs_the_original_release_or_a_descriptor_file(tmp_path):
    root, _ = layouts.write_ddti(tmp_path / "processed")
    for version in ("processed", "auto"):
        module = DDTIDescriptorDataModule(root=str(root), version=version, task="segmentation")
        with pytest.raises(NoDescriptorsError, match=r"processed release.*original release.*descriptor_file"):
            module.read_manifest()
    csv = tmp_path / "descriptors.csv"
    csv.write_text("name,composition,margin\n0000.PNG,solid,smooth\n", encoding="utf-8")
    module = DDTIDescriptorDataModule(root=str(root), version="processed", task="segmentation",
                                      descriptor_file=str(csv))
    module.read_manifest()
    assert module.descriptors_by_name["0000.PNG"] == {"composition": "solid", "margin": "smooth"}
    assert module.descriptors_by_name["0001.PNG"] == {}


def test_data_module_defaults_to_the_original_release_and_classification(tmp_path, usvl_cache, caplog):
    root, _ = layouts.write_ddti_xml(tmp_path / "ddti")
    shutil.copytree(Path(layouts.write_ddti(tmp_path / "processed")[0]) / "DDTI", Path(root) / "DDTI",
                    dirs_exist_ok=True)  # both releases: version auto would read the processed one
    module = DDTIDescriptorDataModule(root=str(root), image_size=32, batch_size=4, decode_cache=False)
    assert module.task == "classification" and module.version == "original"
    with caplog.at_level(logging.WARNING, logger="usvl.data.sources.ddti"):
        module.prepare_data()
        module.setup("fit")
    assert len([r for r in caplog.records if "no ACR TI-RADS equivalent" in r.getMessage()]) == 1
    assert module.descriptors_by_name["2_2.jpg"] == CASES["2_1.jpg"]
    batch = next(iter(module.train_dataloader()))
    for i, name in enumerate(batch["name"]):
        for key, value in batch["descriptors"].items():
            assert value[i] == module.descriptors_by_name[name].get(key, "")
    assert "shape" not in batch["descriptors"]


def test_lexicon_task_fits_on_the_original_release_with_its_descriptors(tmp_path, usvl_cache):
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from usvl.cli import run_lightning

    root, _ = layouts.write_ddti_xml(tmp_path / "ddti", cases=16)
    cli = run_lightning([
        "fit", "--config", str(REPO / "configs" / "datasets" / "ddti_lexicon.yaml"),
        "--config", str(REPO / "configs" / "trainer" / "smoke.yaml"), "--data.root", str(root),
        "--data.init_args.image_size", "64", "--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size",
        "4", "--data.init_args.split_fractions", "[0.5, 0.25, 0.25]", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    assert cli.trainer.state.finished and cli.trainer.current_epoch == 1
    data = cli.datamodule
    for split in ("val", "test"):  # the metrics below need images with a composition in both
        names = data.manifest.loc[data.manifest["split"] == split, "name"]
        assert any("composition" in data.descriptors_by_name[name] for name in names), split
    run = Path(cli.trainer.log_dir)
    events = EventAccumulator(str(run))
    events.Reload()
    logged = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    logged.update(json.loads((run / "test_metrics.json").read_text(encoding="utf-8"))["metrics"])
    for stage in ("val", "test"):
        # descriptor targets reached the evaluation batches; no image has a shape, so it is masked out everywhere
        assert 0.0 <= logged[f"{stage}/composition_accuracy"] <= 1.0, stage
        assert 0.0 <= logged[f"{stage}/margin_accuracy"] <= 1.0, stage
        assert math.isnan(logged[f"{stage}/shape_accuracy"]), stage
    assert logged["train/loss_lexicon"] > 0.0
