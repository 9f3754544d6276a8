"""usvl reproduce: grid files, config hashes, the resumable runner, SLURM arrays, aggregation and plots."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from reproduce_grid import write_grid
from shipped_configs import CONFIGS

from usvl.reproduce.case_metrics import bootstrap_interval, classification_scores, scores_of_cases
from usvl.reproduce.cli import reproduce_main
from usvl.reproduce.grid import GridError, load_grid
from usvl.reproduce.resolve import at_default, bare_defaults, option_default, resolve_config
from usvl.reproduce.runner import DONE_FILE, grown_keys, plan

SHIPPED_GRIDS = sorted(p for p in (CONFIGS / "reproduce").glob("*.yaml") if p.stem != "cells")
"""The grid files; ``cells.yaml`` holds the datasets and methods they include."""


@pytest.mark.parametrize("path", SHIPPED_GRIDS, ids=lambda p: p.stem)
def test_shipped_grids_expand_and_resolve(path: Path) -> None:
    grid = load_grid(path)
    assert grid.cells and grid.output.parts[0] == "results"
    first_of_each_method = {cell.method: cell for cell in reversed(grid.cells)}
    for cell in first_of_each_method.values():  # every method's arguments parse (configs exist, keys are valid)
        assert "model:" in resolve_config(cell.args)


def test_cells_yaml_is_only_included() -> None:
    with pytest.raises(GridError, match="no blocks"):
        load_grid(CONFIGS / "reproduce" / "cells.yaml")


def test_grid_expansion_order_and_arguments(tmp_path: Path) -> None:
    grid = load_grid(write_grid(tmp_path))
    labels = [(c.block, c.dataset, c.method, c.fraction, c.seed) for c in grid.cells]
    assert labels == [("main", "thyroid_cls", "mona_hybrid", 100.0, 1),
                      ("main", "thyroid_cls", "linear_probe", 100.0, 1),
                      ("seg", "thyroid_seg", "linear_probe", 100.0, 1),
                      ("seg", "thyroid_seg", "linear_probe", 100.0, 2),
                      ("few_shot", "thyroid_cls", "mona_hybrid", 50.0, 1),
                      ("few_shot", "thyroid_cls", "mona_hybrid", 100.0, 1)]
    few_shot = grid.cells[4].args
    assert few_shot[few_shot.index("--data.init_args.few_shot") + 1] == "50"
    assert "--data.init_args.few_shot" not in grid.cells[5].args
    probe = grid.cells[1].args
    assert probe[probe.index("--model.init_args.adapter") + 1] == "null"
    assert probe[probe.index("--seed_everything") + 1] == "1"


def test_block_task_arguments_reach_that_task_only(tmp_path: Path) -> None:
    blocks = [{"name": "main", "datasets": ["thyroid_cls", "thyroid_seg"], "methods": ["linear_probe"],
               "args": {"trainer.max_epochs": 4}, "segmentation": {"args": {"trainer.max_epochs": 2}}}]
    cells = load_grid(write_grid(tmp_path, blocks=blocks)).cells

    def epochs(args: tuple[str, ...]) -> list[str]:
        return [args[i + 1] for i, arg in enumerate(args) if arg == "--trainer.max_epochs"]

    assert [(c.task, epochs(c.args)) for c in cells] == [("classification", ["4"]), ("segmentation", ["4", "2"])]


@pytest.mark.parametrize(("change", "message"), [
    ({"blocks": [{"datasets": ["nope"], "methods": ["linear_probe"]}]}, "datasets"),
    ({"blocks": [{"datasets": ["thyroid_cls"], "methods": ["nope"]}]}, "methods"),
    ({"blocks": [{"datasets": ["thyroid_cls"], "methods": ["linear_probe"], "fractions": [0]}]}, "outside"),
    ({"datasets": {"x": {"config": "a.yaml", "task": "detection"}}}, "task"),
    ({"blocks": []}, "no blocks"),
])
def test_malformed_grids_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(GridError, match=message):
        load_grid(write_grid(tmp_path, **change))


def test_identical_configs_share_a_run_and_edits_change_the_hash(tmp_path: Path) -> None:
    runs = plan(load_grid(write_grid(tmp_path)))
    assert runs[5].duplicate_of == 0 and runs[5].directory == runs[0].directory
    assert len({run.config_hash for run in runs}) == 5
    assert runs[2].config_hash != runs[3].config_hash  # the seed is part of the config
    blocks = yaml.safe_load((tmp_path / "grid.yaml").read_text())["blocks"]
    blocks[0]["args"] = {"trainer.max_epochs": 2}
    changed = plan(load_grid(write_grid(tmp_path, blocks=blocks)))
    assert changed[0].config_hash != runs[0].config_hash
    assert changed[2].config_hash == runs[2].config_hash


def test_grown_keys_accept_added_options_only() -> None:
    stored = {"a": 1, "b": {"c": [{"d": 2}]}}
    assert grown_keys(stored, {"a": 1, "b": {"c": [{"d": 2, "e": 3}]}, "f": 4}) == ["f", "b.c.0.e"]
    assert grown_keys(stored, {"a": 2, "b": {"c": [{"d": 2}]}}) is None  # a changed value
    assert grown_keys(stored, {"b": {"c": [{"d": 2}]}}) is None  # a removed option
    assert grown_keys(stored, {"a": 1, "b": {"c": [{"d": 2}, {"d": 3}]}}) is None  # a longer list


def test_grown_keys_accept_a_changed_save_last() -> None:
    stored = {"trainer": {"callbacks": [{"init_args": {"save_last": None, "save_top_k": 1}}]}}
    resolved = {"trainer": {"callbacks": [{"init_args": {"save_last": True, "save_top_k": 1}}]}}
    assert grown_keys(stored, resolved) == ["trainer.callbacks.0.init_args.save_last"]
    resolved["trainer"]["callbacks"][0]["init_args"]["save_top_k"] = 2
    assert grown_keys(stored, resolved) is None


def test_a_finished_run_is_reused_when_later_code_only_added_options(tmp_path: Path) -> None:
    grid = load_grid(write_grid(tmp_path))
    cell = grid.cells[0]
    resolved = yaml.safe_load(resolve_config(cell.args))
    old_run = grid.output / "runs" / cell.dataset / cell.method / cell.fraction_tag / f"seed{cell.seed}-0ld0ld0ld0"
    old_run.mkdir(parents=True)
    stored = {**resolved, "trainer": {k: v for k, v in resolved["trainer"].items() if k != "gradient_clip_val"}}
    stored["trainer"]["logger"] = {**stored["trainer"]["logger"],
                                   "init_args": {**stored["trainer"]["logger"]["init_args"], "save_dir": str(old_run)}}
    (old_run / "config.yaml").write_text(yaml.safe_dump(stored), encoding="utf-8")
    (old_run / DONE_FILE).write_text("{}", encoding="utf-8")
    first = plan(grid)[0]
    assert first.done and first.directory == old_run and first.grown_keys == ("trainer.gradient_clip_val",)
    del stored["trainer"]["log_every_n_steps"]  # the smoke config sets 10, not Lightning's default
    (old_run / "config.yaml").write_text(yaml.safe_dump(stored), encoding="utf-8")
    assert not plan(grid)[0].done
    stored["trainer"]["log_every_n_steps"] = resolved["trainer"]["log_every_n_steps"]
    stored["trainer"]["max_epochs"] = resolved["trainer"]["max_epochs"] + 1
    (old_run / "config.yaml").write_text(yaml.safe_dump(stored), encoding="utf-8")
    rerun = plan(grid)[0]
    assert not rerun.done and rerun.directory != old_run


def test_an_option_added_at_another_value_than_its_default_reruns_the_cell(tmp_path: Path) -> None:
    grid = load_grid(write_grid(tmp_path))
    cell = grid.cells[0]
    old_run = grid.output / "runs" / cell.dataset / cell.method / cell.fraction_tag / f"seed{cell.seed}-0ld0ld0ld0"
    old_run.mkdir(parents=True)
    resolved = yaml.safe_load(resolve_config(cell.args))
    for value, reused in (("none", True), ("equalise", False)):
        resolved["model"]["init_args"]["intensity_standardisation"] = value
        stored = copy.deepcopy(resolved)
        del stored["model"]["init_args"]["intensity_standardisation"]
        stored["trainer"]["logger"]["init_args"]["save_dir"] = str(old_run)
        (old_run / "config.yaml").write_text(yaml.safe_dump(stored), encoding="utf-8")
        (old_run / DONE_FILE).write_text("{}", encoding="utf-8")
        with_value = [*cell.args, "--model.init_args.intensity_standardisation", value]
        first = plan(dataclasses.replace(grid, cells=[dataclasses.replace(cell, args=with_value)]))[0]
        assert (first.directory == old_run) is reused
        assert first.done is reused


def test_option_defaults_come_from_the_bare_config_and_class_signatures() -> None:
    bare = bare_defaults()
    resolved = {"model": {"class_path": "usvl.tasks.ClassificationTask", "init_args": {}}}
    assert option_default("calibration.scaling", resolved, bare) == (True, "temperature")
    assert option_default("model.init_args.intensity_standardisation", resolved, bare) == (True, "none")
    assert option_default("model.init_args.num_classes", resolved, bare) == (False, None)  # required
    assert option_default("model.init_args.head.init_args.linear", resolved, bare) == (False, None)  # no class
    assert option_default("nothing.like.this", resolved, bare) == (False, None)
    resolved["model"]["init_args"]["intensity_standardisation"] = "percentile"
    assert not at_default("model.init_args.intensity_standardisation", resolved, bare)


def test_slurm_script_covers_every_cell(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    grid_file = write_grid(tmp_path)
    script = tmp_path / "array.sbatch"
    assert reproduce_main(["--grid", str(grid_file), "--slurm-script", str(script), "--slurm-option=--gres=gpu:1",
                           "--slurm-max-parallel", "3"]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-5%3" in text and "#SBATCH --gres=gpu:1" in text
    assert '--index "$SLURM_ARRAY_TASK_ID"' in text and os.access(script, os.X_OK)
    capsys.readouterr()
    assert reproduce_main(["--grid", str(grid_file), "--index", "3", "--dry-run"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines()
              if line.strip()[:1].isdigit() and line.split()[1] != "cells,"]
    assert len(listed) == 1 and listed[0].split()[:4] == ["3", "seg", "thyroid_seg", "linear_probe"]
    assert " 2 " in f" {listed[0]} "  # seed 2
    assert reproduce_main(["--grid", str(grid_file), "--index", "6", "--dry-run"]) == 2


def test_an_array_index_runs_its_cell_only(finished_grid: dict) -> None:
    assert finished_grid["done_after_index"] == [2]


def test_every_run_dir_holds_its_config_metrics_and_cases(finished_grid: dict) -> None:
    for run in finished_grid["runs"]:
        assert (run.directory / DONE_FILE).is_file()
        assert (run.directory / "config.yaml").is_file()
        assert (run.directory / "test_metrics.json").is_file()
        assert (run.directory / "test_cases.csv").is_file()
        record = json.loads((run.directory / DONE_FILE).read_text())
        assert record["config_hash"] == run.config_hash and record["status"] == "done"
        if (Path(__file__).resolve().parents[1] / ".git").exists():  # the code each run started with
            assert len(record["code"]["git_commit"]) == 40 and isinstance(record["code"]["git_dirty"], bool)
        resolved = yaml.safe_load((run.directory / "config.yaml").read_text())
        assert resolved["seed_everything"] == run.cell.seed


def test_interrupted_attempts_are_kept_aside_and_finished_runs_skipped(finished_grid: dict) -> None:
    interrupted = finished_grid["interrupted"]
    assert (interrupted.with_name(f"{interrupted.name}.interrupted-1") / "train.log").read_text() == "killed\n"
    assert "0 runs to do, 5 already done" in finished_grid["again"].stdout


def test_aggregation_tables_and_plots(finished_grid: dict) -> None:
    output = finished_grid["grid"].output
    table = (output / "table.md").read_text()
    assert "## main: classification" in table and "## seg: segmentation" in table
    assert "| thyroid_seg | linear_probe | 2/2 |" in table
    assert "## Headline" in table and "| thyroid_seg | Dice |" in table
    frame = pd.read_csv(output / "table.csv")
    seg = frame[(frame.block == "seg")].iloc[0]
    assert seg.seeds_done == 2 and seg.dice_ci_low <= seg.dice_ci_high
    assert {"auroc_mean", "auroc_ci_low", "auroc_ci_high", "trainable_params_mean", "fit_minutes_mean"} <= set(frame)
    runs_csv = pd.read_csv(output / "runs.csv")
    assert len(runs_csv) == 6  # the few-shot 100 % cell is the main block's run, listed in both blocks
    plots = {path.name for path in (output / "plots").glob("*.png")}
    assert {"bars_classification.png", "bars_segmentation.png", "few_shot.png", "roc.png",
            "cases_thyroid_seg.png", "cases_thyroid_cls.png"} <= plots


def test_metrics_recomputed_from_cases_equal_the_logged_ones(finished_grid: dict) -> None:
    for run in finished_grid["runs"]:
        logged = json.loads((run.directory / "test_metrics.json").read_text())
        cases = pd.read_csv(run.directory / "test_cases.csv")
        recomputed = scores_of_cases(cases, run.cell.task, logged["class_names"])
        for name, value in recomputed.items():
            if pd.isna(value):
                continue
            assert value == pytest.approx(logged["metrics"][f"test/{name}"], abs=1e-5), (run.cell.label, name)


def test_classification_scores_by_hand() -> None:
    import numpy as np

    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 1])
    scores = classification_scores(probabilities, labels)
    assert scores["accuracy"] == 0.5 and scores["auroc"] == 0.5
    assert scores["sensitivity"] == 0.5 and scores["specificity"] == 0.5 and scores["f1"] == 0.5


def test_bootstrap_interval_narrows_with_more_images() -> None:
    import numpy as np

    generator = np.random.default_rng(0)

    def cases(n: int) -> pd.DataFrame:
        labels = generator.integers(0, 2, n)
        p = np.clip(labels * 0.3 + generator.random(n) * 0.7, 0, 1)
        return pd.DataFrame({"name": [f"i{k}" for k in range(n)], "label": np.where(labels, "b", "a"),
                             "p_a": 1 - p, "p_b": p})

    small = bootstrap_interval([cases(40)], "classification", ["a", "b"], resamples=300)["auroc"]
    large = bootstrap_interval([cases(1000)], "classification", ["a", "b"], resamples=300)["auroc"]
    assert small[0] < small[1] and (large[1] - large[0]) < (small[1] - small[0]) / 2


def test_headline_bolds_the_best_complete_row_only() -> None:
    from usvl.reproduce.aggregate import CellSummary, headline_lines

    def cell(dataset: str, method: str, task: str, means: list[float], planned: int = 2,
             fraction: float = 100.0) -> CellSummary:
        metric = "auroc" if task == "classification" else "dice"
        summary = CellSummary("main", dataset, method, task, fraction, planned, records=[object()] * len(means))
        summary.mean[metric] = sum(means) / len(means)
        summary.std[metric] = float(np.std(means, ddof=1)) if len(means) > 1 else math.nan
        return summary

    lines = headline_lines([
        cell("thyroid_cls", "mona", "classification", [0.80, 0.82]),
        cell("thyroid_cls", "unet", "classification", [0.85, 0.87]),
        cell("breast_seg", "mona", "segmentation", [0.70, 0.72]),
        cell("breast_seg", "unet", "segmentation", [0.90], planned=2),
    ])
    assert lines[2] == "| Dataset | Metric | mona | unet |"
    assert lines[4] == "| thyroid_cls | AUROC | 0.810 ± 0.014 | **0.860 ± 0.014** |"
    # unet has 1 of its 2 seeds: no winner is named in that row
    assert lines[5] == "| breast_seg | Dice | 0.710 ± 0.014 | 0.900 (1/2 seeds) |"
