"""The shift benchmark: grids with test sets (configs/shift), the test-set runner and the shift tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from reproduce_grid import write_grid
from shipped_configs import CONFIGS

from usvl.data.synthetic import ACQUISITIONS
from usvl.reproduce.grid import GridError, load_grid
from usvl.reproduce.resolve import resolve_config
from usvl.reproduce.runner import DONE_FILE, plan
from usvl.reproduce.shift_table import shift_frame, write_shift_tables
from usvl.reproduce.test_sets import TEST_DONE_FILE, best_checkpoint, evaluation_command, plan_tests

SHIFT_GRIDS = sorted((CONFIGS / "shift").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIFT_GRIDS, ids=lambda p: p.stem)
def test_shipped_shift_grids_expand_and_their_test_sets_resolve(path: Path) -> None:
    grid = load_grid(path)
    assert grid.output.parts[:2] == ("results", "shift")
    methods = {cell.method for cell in grid.cells}
    thyroid_methods = {"shipped", "previous_recipe", "acquisition_augment", "bias_calibration", "percentile",
                       "equalise", "geometry_augment"}
    breast_methods = {"shipped", "previous_recipe", "acquisition_augment"}
    assert methods == (thyroid_methods if path.stem == "thyroid" else breast_methods)
    assert sorted(cell.seed for cell in grid.cells if cell.method == "shipped") == [1, 2, 3]
    assert set(grid.test_sets) == {"in_domain", *ACQUISITIONS}
    assert grid.test_sets["in_domain"]["args"] == ()
    augmented = next(cell for cell in grid.cells if cell.method == "acquisition_augment")
    resolved = yaml.safe_load(resolve_config([*augmented.args, *grid.test_sets["deep"]["args"]]))
    assert resolved["data"]["init_args"]["test_acquisition"] == "deep"
    assert resolved["data"]["init_args"]["acquisition_augment"]["init_args"]["p_speckle"] > 0  # every part on
    # `shipped` is the experiment config as it stands; `previous_recipe` pins the recipe the earlier runs used.
    experiment = next(iter(grid.datasets.values()))["config"]
    shipped = next(cell for cell in grid.cells if cell.method == "shipped")
    assert yaml.safe_load(resolve_config(shipped.args)) == yaml.safe_load(resolve_config(
        ["--config", experiment, "--seed_everything", str(shipped.seed)]))
    previous = next(cell for cell in grid.cells if cell.method == "previous_recipe")
    previous_resolved = yaml.safe_load(resolve_config(previous.args))
    assert previous_resolved["data"]["init_args"]["acquisition_augment"] is None
    assert previous_resolved["calibration"]["scaling"] == "temperature"
    assert not previous_resolved["calibration"]["lesion_gate"]
    if "bias_calibration" in methods:
        biased = next(cell for cell in grid.cells if cell.method == "bias_calibration")
        resolved = yaml.safe_load(resolve_config(biased.args))
        assert resolved["calibration"]["scaling"] == "temperature_bias"
        assert resolved["model"] == previous_resolved["model"]  # the same models, calibrated otherwise
    assert previous_resolved["model"]["init_args"]["intensity_standardisation"] == "none"
    if "geometry_augment" in methods:
        cell = next(cell for cell in grid.cells if cell.method == "geometry_augment")
        augment = yaml.safe_load(resolve_config(cell.args))["data"]["init_args"]["acquisition_augment"]["init_args"]
        assert augment["p_zoom"] > 0 and augment["p_bars"] > 0
        assert all(augment[f"p_{part}"] == 0 for part in ("tgc", "gain", "dynamic_range", "speckle", "blur", "shadow",
                                                             "haze", "sector"))
    for method in {"percentile", "equalise"} & methods:
        cell = next(cell for cell in grid.cells if cell.method == method)
        assert yaml.safe_load(resolve_config(cell.args))["model"]["init_args"]["intensity_standardisation"] == method


def test_test_sets_are_checked(tmp_path: Path) -> None:
    with pytest.raises(GridError, match="unknown keys"):
        load_grid(write_grid(tmp_path, test_sets={"x": {"argz": {}}}))
    with pytest.raises(GridError, match="must map names"):
        load_grid(write_grid(tmp_path, test_sets=["x"]))


def fake_run(run, metrics: dict[str, float]) -> None:
    """Mark a planned run finished with the given test metrics."""
    run.directory.mkdir(parents=True, exist_ok=True)
    (run.directory / "best.ckpt").write_text("weights")
    (run.directory / "test_metrics.json").write_text(json.dumps({
        "metrics": {f"test/{k}": v for k, v in metrics.items()}, "checkpoint": str(run.directory / "best.ckpt"),
        "class_names": ["benign", "malignant"], "trainable_params": 1, "fit_seconds": 1.0}))
    (run.directory / DONE_FILE).write_text("{}")


def test_plan_command_and_tables(tmp_path: Path) -> None:
    test_sets = {"in_domain": {}, "low_freq": {"label": "lower frequency",
                                               "args": {"data.init_args.test_acquisition": "low_freq"}},
                 "deep": {"args": {"data.init_args.test_acquisition": "deep"}}}
    blocks = [{"name": "main", "datasets": ["thyroid_cls"], "methods": ["mona_hybrid"], "seeds": [1, 2]}]
    grid = load_grid(write_grid(tmp_path, blocks=blocks, test_sets=test_sets))
    runs = plan(grid)
    planned = plan_tests(runs, grid.test_sets)
    assert [(t.run.cell.seed, t.name) for t in planned] == [(seed, name) for seed in (1, 2) for name in grid.test_sets]
    by = {(t.run.cell.seed, t.name): t for t in planned}
    tests = [by[1, "in_domain"], by[1, "low_freq"], by[1, "deep"], by[2, "in_domain"], by[2, "low_freq"]]
    assert tests[0].own and tests[0].directory == runs[0].directory
    assert tests[1].directory.parent == runs[0].directory / "test_sets" and tests[1].directory.name.startswith(
        "low_freq-")
    for run, auroc in zip(runs, (0.9, 0.8), strict=True):
        fake_run(run, {"auroc": auroc, "specificity_at_threshold": 0.7, "accuracy": 0.75, "ece": 0.04})
    command = evaluation_command(tests[1])
    assert command[2:4] == ["usvl", "test"] and "--ckpt_path" in command
    assert command[command.index("--data.init_args.test_acquisition") + 1] == "low_freq"
    for test, (auroc, specificity) in zip([tests[1], tests[2], tests[4]], [(0.7, 0.5), (0.6, 0.3), (0.8, 0.7)],
                                          strict=True):
        test.directory.mkdir(parents=True)
        (test.directory / "test_metrics.json").write_text(json.dumps({"metrics": {
            "test/auroc": auroc, "test/specificity_at_threshold": specificity, "test/ood_fraction": 0.5}}))
        (test.directory / TEST_DONE_FILE).write_text("{}")
    frame = shift_frame(grid, planned).set_index("test_set")
    assert frame.loc["in_domain", "auroc_mean"] == pytest.approx(0.85)
    assert frame.loc["low_freq", "auroc_mean"] == pytest.approx(0.75) and frame.loc["low_freq", "seeds_done"] == 2
    assert frame.loc["deep", "seeds_done"] == 1 and frame.loc["deep", "seeds_planned"] == 2
    assert frame.loc["in_domain", "accuracy_at_threshold_mean"] == pytest.approx(0.75)  # the 0.5 fallback
    markdown, csv = write_shift_tables(grid, planned, "usvl reproduce --grid x")
    text = markdown.read_text()
    assert "| low_freq | mona_hybrid | 2/2 | 0.750 ± 0.071 |" in text
    assert "summary over the shifted test sets" in text and "lower frequency" in text
    summary = text.split("summary over the shifted test sets")[1].splitlines()[4]
    assert summary == "| mona_hybrid | 0.850 | 0.675 | 0.600 | 0.700 | 0.450 | 0.300 | 0.040 | — | — |"
    assert csv.is_file()


def test_a_moved_run_still_finds_its_checkpoint(tmp_path: Path) -> None:
    blocks = [{"name": "main", "datasets": ["thyroid_cls"], "methods": ["mona_hybrid"], "seeds": [1]}]
    run = plan(load_grid(write_grid(tmp_path, blocks=blocks)))[0]
    (run.directory / "checkpoints").mkdir(parents=True)
    (run.directory / "checkpoints" / "epoch3.ckpt").write_text("weights")
    old_place = Path("results/old_method_name/seed1-abc/checkpoints/epoch3.ckpt")  # as test_metrics.json has it
    (run.directory / "test_metrics.json").write_text(json.dumps({"checkpoint": str(old_place)}))
    assert best_checkpoint(run) == str(run.directory / "checkpoints" / "epoch3.ckpt")
    (run.directory / "checkpoints" / "epoch3.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        best_checkpoint(run)
