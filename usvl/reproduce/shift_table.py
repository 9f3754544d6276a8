"""The shift benchmark's tables: each trained model on each test set, mean ± std over seeds.

``shift_table.md`` has, per dataset, one row per (test set, method) with the task's metrics, then a summary per
method: the in-domain value, the mean over the shifted test sets (every test set but the run's own test split; each
test set's seed mean counts once) and the worst shifted test set's value of the headline metrics.
``shift_table.csv`` has one row per (dataset, method, test set). Classification metrics are those at the threshold
stored with the model (``*_at_threshold``; accuracy falls back to the 0.5 argmax when a model has no stored
threshold) and the ECE of the calibrated probabilities.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from usvl.reproduce.grid import Grid
from usvl.reproduce.test_sets import PlannedTest
from usvl.utils.atomic import write_csv_atomic, write_text_atomic

SHIFT_METRICS = {
    "classification": (("auroc", "AUROC"), ("accuracy_at_threshold", "Accuracy"),
                       ("sensitivity_at_threshold", "Sensitivity"), ("specificity_at_threshold", "Specificity"),
                       ("ece", "ECE"), ("ood_fraction", "Outside training range")),
    "segmentation": (("dice", "Dice"), ("hd95_lesion", "HD95 (px)"), ("fp_rate_normal", "FP on normals"),
                     ("ood_fraction", "Outside training range")),
}
"""The columns per task: metric key (without ``test/``) and title."""

FALLBACK = {"accuracy_at_threshold": "accuracy", "sensitivity_at_threshold": "sensitivity",
            "specificity_at_threshold": "specificity"}
"""A model without a stored threshold reports the 0.5-threshold metric instead."""

SUMMARY = {"classification": (("auroc", "min"), ("specificity_at_threshold", "min"), ("ece", "max")),
           "segmentation": (("dice", "min"), ("fp_rate_normal", "max"), ("hd95_lesion", "max"))}
"""Summary columns per task: metric and the worst shifted test set's value (``min`` or ``max``) beside the mean."""


def read_test_metrics(test: PlannedTest) -> dict[str, float] | None:
    """The test's metrics without the ``test/`` prefix (None when it has not finished)."""
    if not test.done:
        return None
    payload = json.loads((test.directory / "test_metrics.json").read_text(encoding="utf-8"))
    metrics = {key.split("/", 1)[1]: float(value) for key, value in payload.get("metrics", {}).items()
               if isinstance(value, int | float)}
    for key, fallback in FALLBACK.items():
        if key not in metrics and fallback in metrics:
            metrics[key] = metrics[fallback]
    return metrics


def shift_frame(grid: Grid, tests: Sequence[PlannedTest]) -> pd.DataFrame:
    """One row per (dataset, method, test set): seeds done/planned and ``<metric>_mean`` / ``_std`` per metric."""
    groups: dict[tuple[str, str, str], list[dict[str, float] | None]] = {}
    tasks: dict[str, str] = {}
    for test in tests:
        cell = test.run.cell
        tasks[cell.dataset] = cell.task
        groups.setdefault((cell.dataset, cell.method, test.name), []).append(read_test_metrics(test))
    rows = []
    for (dataset, method, name), results in groups.items():
        finished = [r for r in results if r is not None]
        row: dict = {"dataset": dataset, "task": tasks[dataset], "method": method, "test_set": name,
                     "label": grid.test_sets[name]["label"], "own_test_split": not grid.test_sets[name]["args"],
                     "seeds_done": len(finished), "seeds_planned": len(results)}
        for metric, _ in SHIFT_METRICS[tasks[dataset]]:
            values = [r[metric] for r in finished if metric in r and not math.isnan(r[metric])]
            row[f"{metric}_mean"] = float(np.mean(values)) if values else math.nan
            row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(row: pd.Series, metric: str) -> str:
    mean, std = row.get(f"{metric}_mean", math.nan), row.get(f"{metric}_std", math.nan)
    if mean is None or math.isnan(mean):
        return "—"
    digits = 1 if metric.startswith("hd95") else 3
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def shift_markdown(grid: Grid, frame: pd.DataFrame, command: str) -> str:
    """The Markdown tables (see the module docstring)."""
    lines = [f"# Shift benchmark `{grid.name}`", ""]
    if grid.description:
        lines += [grid.description, ""]
    lines += [f"Made by `{command}` on {time.strftime('%Y-%m-%d')}. Each value: mean ± standard deviation over the "
              "seeds done (of those planned); a model is trained once per seed and method and tested on every test "
              "set. \"Outside training range\": fraction of test images with an image statistic outside the 1st-99th "
              "percentile box of the training images (usvl.data.domain_stats).", ""]
    for dataset in dict.fromkeys(frame["dataset"]):
        rows = frame[frame["dataset"] == dataset]
        task = rows["task"].iloc[0]
        metrics = SHIFT_METRICS[task]
        lines += [f"## {dataset} ({task})", ""]
        header = ["Test set", "Method", "Seeds", *[title for _, title in metrics]]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, row in rows.iterrows():
            cells = [row["test_set"], row["method"], f"{row['seeds_done']}/{row['seeds_planned']}",
                     *[_cell(row, metric) for metric, _ in metrics]]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"### {dataset}: summary over the shifted test sets", ""]
        titles = dict(metrics)
        header = ["Method"]
        for metric, reduce in SUMMARY[task]:
            header += [f"{titles[metric]} in-domain", f"{titles[metric]} shifted mean", f"{titles[metric]} shifted "
                       f"{reduce}"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in dict.fromkeys(rows["method"]):
            mine = rows[rows["method"] == method]
            own, shifted = mine[mine["own_test_split"]], mine[~mine["own_test_split"]]
            cells = [method]
            for metric, reduce in SUMMARY[task]:
                values = shifted[f"{metric}_mean"].dropna()
                digits = 1 if metric.startswith("hd95") else 3
                inside = own[f"{metric}_mean"].dropna()
                cells += [f"{inside.iloc[0]:.{digits}f}" if len(inside) else "—",
                          f"{values.mean():.{digits}f}" if len(values) else "—",
                          f"{getattr(values, reduce)():.{digits}f}" if len(values) else "—"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Test sets", "", *[f"- `{name}`: {spec['label']}" for name, spec in grid.test_sets.items()], ""]
    methods = [f"- `{name}`: {spec.get('label', '')}" for name, spec in grid.methods.items() if spec and
               spec.get("label")]
    if methods:
        lines += ["## Methods", "", *methods, ""]
    return "\n".join(lines)


def write_shift_tables(grid: Grid, tests: Sequence[PlannedTest], command: str) -> list[Path]:
    """Write ``shift_table.md`` and ``shift_table.csv`` into the grid's output folder; returns their paths."""
    frame = shift_frame(grid, tests)
    grid.output.mkdir(parents=True, exist_ok=True)
    markdown, csv = grid.output / "shift_table.md", grid.output / "shift_table.csv"
    write_text_atomic(markdown, shift_markdown(grid, frame, command))
    write_csv_atomic(csv, frame)
    return [markdown, csv]
