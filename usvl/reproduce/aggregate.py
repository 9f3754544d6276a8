"""Aggregate a grid's finished runs into ``<output>/table.md``, ``table.csv`` and plots.

Per cell (block, dataset, method, training fraction): the mean ± standard deviation over seeds of each test metric
as the runs logged it, a 95 % bootstrap interval over test images (:func:`~usvl.reproduce.case_metrics.
bootstrap_interval`), the trainable parameters and the training time. Cells without a finished run are listed as
missing, never dropped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from usvl.reproduce.case_metrics import CLASSIFICATION_METRICS, SEGMENTATION_METRICS, bootstrap_interval
from usvl.reproduce.grid import Grid
from usvl.reproduce.runner import DONE_FILE, PlannedRun

METRIC_LABELS = {"accuracy": "Accuracy", "auroc": "AUROC", "f1": "F1", "sensitivity": "Sensitivity",
                 "specificity": "Specificity", "dice": "Dice", "iou": "IoU", "hd95_lesion": "HD95 (px)",
                 "asd_lesion": "ASD (px)"}
"""Column titles; HD95 and ASD are over images with a lesion, in pixels of the 224 px input."""

LOWER_IS_BETTER = {"hd95_lesion", "asd_lesion"}

HEADLINE_METRIC = {"classification": "auroc", "segmentation": "dice"}
"""The one metric per task that the headline table compares methods on."""


def task_metrics(task: str) -> tuple[str, ...]:
    """The table's metrics of a task."""
    return CLASSIFICATION_METRICS if task == "classification" else SEGMENTATION_METRICS


@dataclass
class RunRecord:
    """One finished run as the aggregation reads it."""

    block: str
    dataset: str
    method: str
    task: str
    fraction: float
    seed: int
    directory: Path
    metrics: dict[str, float]
    class_names: list[str]
    trainable_params: int
    fit_seconds: float
    cases: pd.DataFrame | None = None


@dataclass
class CellSummary:
    """The aggregate of one (block, dataset, method, fraction) over its seeds."""

    block: str
    dataset: str
    method: str
    task: str
    fraction: float
    seeds_planned: int
    records: list[RunRecord] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    interval: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every planned seed has a finished run."""
        return len(self.records) == self.seeds_planned


def read_run(run: PlannedRun) -> RunRecord | None:
    """The record of a finished run (None when it has not finished)."""
    if not (run.directory / DONE_FILE).is_file():
        return None
    payload = json.loads((run.directory / "test_metrics.json").read_text(encoding="utf-8"))
    metrics = {key.split("/", 1)[1]: float(value) for key, value in payload.get("metrics", {}).items()
               if isinstance(value, int | float)}
    cases_file = run.directory / "test_cases.csv"
    cases = pd.read_csv(cases_file) if cases_file.is_file() else None
    return RunRecord(run.cell.block, run.cell.dataset, run.cell.method, run.cell.task, run.cell.fraction,
                     run.cell.seed, run.directory, metrics, list(payload.get("class_names", [])),
                     int(payload.get("trainable_params", 0)), float(payload.get("fit_seconds", math.nan)), cases)


def summarise(runs: Sequence[PlannedRun], resamples: int = 1000) -> list[CellSummary]:
    """Group the runs by cell and compute means, standard deviations and bootstrap intervals."""
    cells: dict[tuple, CellSummary] = {}
    for run in runs:
        cell = run.cell
        key = (cell.block, cell.dataset, cell.method, cell.fraction)
        summary = cells.setdefault(key, CellSummary(cell.block, cell.dataset, cell.method, cell.task, cell.fraction,
                                                    0))
        summary.seeds_planned += 1
        record = read_run(run)
        if record is not None:
            record.block = cell.block
            summary.records.append(record)
    for summary in cells.values():
        if not summary.records:
            continue
        names = sorted({name for record in summary.records for name in record.metrics})
        for name in names:
            values = [record.metrics[name] for record in summary.records if name in record.metrics]
            summary.mean[name] = float(np.mean(values))
            summary.std[name] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        summary.mean["trainable_params"] = float(np.mean([r.trainable_params for r in summary.records]))
        summary.mean["fit_minutes"] = float(np.mean([r.fit_seconds for r in summary.records])) / 60
        with_cases = [record.cases for record in summary.records if record.cases is not None]
        if with_cases and len(with_cases) == len(summary.records):
            summary.interval = bootstrap_interval(with_cases, summary.task, summary.records[0].class_names,
                                                  resamples=resamples)
        class_names = summary.records[0].class_names
        if summary.task == "classification" and len(class_names) > 2 and with_cases:
            from usvl.reproduce.case_metrics import scores_of_cases

            per_class = [scores_of_cases(cases, summary.task, class_names) for cases in with_cases]
            for k, class_name in enumerate(class_names):
                for metric in ("auroc", "sensitivity", "specificity"):
                    values = [scores[f"{metric}_{k}"] for scores in per_class]
                    summary.mean[f"{metric}_{class_name}"] = float(np.mean(values))
                    summary.std[f"{metric}_{class_name}"] = float(np.std(values, ddof=1)) if len(values) > 1 \
                        else math.nan
    return list(cells.values())


def format_value(summary: CellSummary, metric: str) -> str:
    """``mean ± std [low, high]`` with 3 decimals (1 for distances); ``—`` when missing."""
    if metric not in summary.mean:
        return "—"
    digits = 1 if metric in LOWER_IS_BETTER else 3
    text = f"{summary.mean[metric]:.{digits}f}"
    if not math.isnan(summary.std.get(metric, math.nan)):
        text += f" ± {summary.std[metric]:.{digits}f}"
    if metric in summary.interval:
        low, high = summary.interval[metric]
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def fraction_label(fraction: float) -> str:
    """``100 %``, ``10 %``, ``2.5 %``."""
    return f"{fraction:g} %"


def headline_lines(summaries: list[CellSummary]) -> list[str]:
    """Markdown of one table per block: a row per dataset (and training fraction), a column per method.

    Each value is the task's headline metric (:data:`HEADLINE_METRIC`), mean ± std over seeds; the best mean of a
    row is bold. A row compares methods only where every method has every planned seed: otherwise its values carry
    the seeds done (``n/m``) and nothing is bold.
    """
    lines: list[str] = []
    for block in dict.fromkeys(s.block for s in summaries):
        rows = [s for s in summaries if s.block == block]
        methods = list(dict.fromkeys(s.method for s in rows))
        show_fraction = len({s.fraction for s in rows}) > 1
        lines += [f"### {block}", "",
                  "| " + " | ".join(["Dataset", "Metric", *(["Train data"] if show_fraction else []), *methods])
                  + " |", "|" + "---|" * (2 + show_fraction + len(methods))]
        for (dataset, fraction), cells in _group(rows).items():
            metric = HEADLINE_METRIC[cells[0].task]
            by_method = {s.method: s for s in cells}
            complete = len(by_method) == len(methods) and all(s.complete and metric in s.mean for s in cells)
            best = max(by_method.values(), key=lambda s: s.mean[metric]).method if complete else None
            values = []
            for method in methods:
                cell = by_method.get(method)
                if cell is None or metric not in cell.mean:
                    values.append("—")
                    continue
                text = f"{cell.mean[metric]:.3f}"
                if not math.isnan(cell.std.get(metric, math.nan)):
                    text += f" ± {cell.std[metric]:.3f}"
                if not cell.complete:
                    text += f" ({len(cell.records)}/{cell.seeds_planned} seeds)"
                values.append(f"**{text}**" if method == best else text)
            lines.append("| " + " | ".join([dataset, METRIC_LABELS[metric],
                                             *([fraction_label(fraction)] if show_fraction else []), *values]) + " |")
        lines.append("")
    return lines


def _group(rows: list[CellSummary]) -> dict[tuple[str, float], list[CellSummary]]:
    """Cells by (dataset, fraction), datasets in grid order, fractions ascending."""
    groups: dict[tuple[str, float], list[CellSummary]] = {}
    for s in rows:
        groups.setdefault((s.dataset, s.fraction), []).append(s)
    order = list(dict.fromkeys(s.dataset for s in rows))
    return dict(sorted(groups.items(), key=lambda item: (order.index(item[0][0]), item[0][1])))


def markdown_table(grid: Grid, summaries: list[CellSummary], command: str) -> str:
    """The results as Markdown: one table per block and task, per-class rows for 3 classes, missing runs."""
    lines = [f"# Results of grid `{grid.name}`", ""]
    if grid.description:
        lines += [grid.description, ""]
    finished = sum(len(s.records) for s in summaries)
    planned = sum(s.seeds_planned for s in summaries)
    lines += [f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: {finished} of {planned} cells have a finished run "
              f"(grid file `{grid.path.name}`; one folder per run under `runs/`; a run shared by two blocks counts "
              "in both).",
              "", "Each value: mean ± standard deviation over seeds [95 % bootstrap interval over test images of the "
              "seed mean]. HD95 and ASD are over test images with a lesion, in pixels of the 224 px input (lower is "
              "better). Trainable parameters and training time (minutes, wall clock, shared 2-core machine unless "
              "noted) are means over seeds.", "",
              "## Headline", "",
              "Test AUROC (classification) and Dice (segmentation), mean ± std over seeds; bold: the best mean of a "
              "row where every method has all its seeds. The full tables follow.", "",
              *headline_lines(summaries)]
    for block in dict.fromkeys(s.block for s in summaries):
        for task in ("classification", "segmentation"):
            rows = [s for s in summaries if s.block == block and s.task == task]
            if not rows:
                continue
            metrics = task_metrics(task)
            show_fraction = len({s.fraction for s in rows}) > 1
            lines += [f"## {block}: {task}", ""]
            header = ["Dataset", "Method", *(["Train data"] if show_fraction else []), "Seeds",
                      *[METRIC_LABELS[m] for m in metrics], "Trainable params", "Train min"]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for s in rows:
                params = f"{s.mean['trainable_params']:,.0f}" if "trainable_params" in s.mean else "—"
                minutes = f"{s.mean['fit_minutes']:.1f}" if "fit_minutes" in s.mean else "—"
                seeds = f"{len(s.records)}/{s.seeds_planned}"
                cells = [s.dataset, s.method,
                         *([fraction_label(s.fraction)] if show_fraction else []), seeds,
                         *[format_value(s, m) for m in metrics], params, minutes]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
            per_class = [s for s in rows if any(k.startswith("auroc_") for k in s.mean)]
            if per_class:
                lines += [f"### {block}: {task}, per class (one vs rest)", "",
                          "| Dataset | Method | Class | AUROC | Sensitivity | Specificity |",
                          "|---|---|---|---|---|---|"]
                for s in per_class:
                    for class_name in s.records[0].class_names:
                        lines.append("| " + " | ".join([s.dataset, s.method, class_name, *[
                            format_value(s, f"{m}_{class_name}") for m in ("auroc", "sensitivity", "specificity")]])
                                     + " |")
                lines.append("")
    missing = [s for s in summaries if not s.complete]
    if missing:
        lines += ["## Runs not finished", "", "| Block | Dataset | Method | Train data | Seeds done |",
                  "|---|---|---|---|---|"]
        lines += [f"| {s.block} | {s.dataset} | {s.method} | {fraction_label(s.fraction)} | "
                  f"{len(s.records)}/{s.seeds_planned} |" for s in missing]
        lines.append("")
    labels = [f"- `{name}`: {spec.get('label', '')}" for name, spec in grid.methods.items() if spec and
              spec.get("label")]
    if labels:
        lines += ["## Methods", "", *labels, ""]
    return "\n".join(lines)


def summary_frame(summaries: list[CellSummary]) -> pd.DataFrame:
    """One row per cell: identity, seeds, and ``<metric>_mean``, ``_std``, ``_ci_low``, ``_ci_high``."""
    rows: list[dict[str, Any]] = []
    for s in summaries:
        row: dict[str, Any] = {"block": s.block, "dataset": s.dataset, "task": s.task, "method": s.method,
                               "fraction": s.fraction, "seeds_done": len(s.records), "seeds_planned": s.seeds_planned}
        for name, value in s.mean.items():
            row[f"{name}_mean"] = value
            if name in s.std:
                row[f"{name}_std"] = s.std[name]
            if name in s.interval:
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = s.interval[name]
        rows.append(row)
    return pd.DataFrame(rows)
