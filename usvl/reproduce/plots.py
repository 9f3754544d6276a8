"""The grid's plots (matplotlib, PNG): metric bars with error bars, few-shot curves, ROC curves, best/worst cases."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from usvl.reproduce.aggregate import METRIC_LABELS, CellSummary, task_metrics  # noqa: E402
from usvl.reproduce.case_metrics import case_arrays  # noqa: E402
from usvl.reproduce.grid import Grid  # noqa: E402

PRIMARY = {"classification": "auroc", "segmentation": "dice"}
"""The metric of the few-shot curves."""


def _methods(summaries: list[CellSummary]) -> list[str]:
    return list(dict.fromkeys(s.method for s in summaries))


def full_data_cells(summaries: list[CellSummary]) -> list[CellSummary]:
    """Cells trained on the whole training split that have runs, one per (dataset, method): the first block's."""
    seen: dict[tuple[str, str], CellSummary] = {}
    for s in summaries:
        if s.fraction >= 100 and s.records:
            seen.setdefault((s.dataset, s.method), s)
    return list(seen.values())


def bar_chart(summaries: list[CellSummary], task: str, path: Path) -> Path | None:
    """One panel per metric: a group of bars per dataset, one bar per method, error bars = std over seeds."""
    rows = [s for s in full_data_cells(summaries) if s.task == task]
    if not rows:
        return None
    metrics = task_metrics(task)
    datasets = list(dict.fromkeys(s.dataset for s in rows))
    methods = _methods(rows)
    columns = min(3, len(metrics))
    figure, axes = plt.subplots(math.ceil(len(metrics) / columns), columns, squeeze=False,
                                figsize=(4.6 * columns, 3.4 * math.ceil(len(metrics) / columns)))
    width = 0.8 / len(methods)
    for axis, metric in zip(axes.flat, metrics, strict=False):
        for m, method in enumerate(methods):
            means, errors = [], []
            for dataset in datasets:
                cell = next((s for s in rows if s.dataset == dataset and s.method == method), None)
                means.append(cell.mean.get(metric, np.nan) if cell else np.nan)
                error = cell.std.get(metric, np.nan) if cell else np.nan
                errors.append(0.0 if math.isnan(error) else error)
            positions = np.arange(len(datasets)) + (m - (len(methods) - 1) / 2) * width
            axis.bar(positions, means, width, yerr=errors, capsize=2, label=method)
        axis.set_xticks(np.arange(len(datasets)), datasets, rotation=20, ha="right", fontsize=8)
        axis.set_title(METRIC_LABELS[metric])
        axis.grid(axis="y", alpha=0.3)
    for axis in list(axes.flat)[len(metrics):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.suptitle(f"{task}: test metrics (mean ± std over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def few_shot_chart(summaries: list[CellSummary], path: Path) -> Path | None:
    """The primary metric against the training fraction (log axis), one line per method, one panel per dataset."""
    datasets = [d for d in dict.fromkeys(s.dataset for s in summaries)
                if len({s.fraction for s in summaries if s.dataset == d and s.records and s.block != "main"}) > 1]
    if not datasets:
        return None
    figure, axes = plt.subplots(1, len(datasets), squeeze=False, figsize=(5 * len(datasets), 3.6))
    for axis, dataset in zip(axes.flat, datasets, strict=True):
        rows = [s for s in summaries if s.dataset == dataset and s.records and s.block != "main"]
        metric = PRIMARY[rows[0].task]
        for method in _methods(rows):
            points = sorted((s.fraction, s.mean.get(metric, np.nan), s.std.get(metric, np.nan))
                            for s in rows if s.method == method)
            x = np.array([p[0] for p in points])
            y = np.array([p[1] for p in points])
            spread = np.nan_to_num(np.array([p[2] for p in points]))
            axis.plot(x, y, marker="o", label=method)
            axis.fill_between(x, y - spread, y + spread, alpha=0.15)
        axis.set_xscale("log")
        axis.set_xlabel("training data (% of the training split)")
        axis.set_ylabel(METRIC_LABELS[metric])
        axis.set_title(dataset)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("Few-shot: test metric vs training fraction (mean ± std over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def roc_points(probabilities: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold (descending scores)."""
    order = np.argsort(-probabilities, kind="stable")
    hits = positive[order]
    tpr = np.concatenate([[0.0], np.cumsum(hits) / max(hits.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(~hits) / max((~hits).sum(), 1)])
    return fpr, tpr


def roc_chart(summaries: list[CellSummary], path: Path) -> Path | None:
    """ROC curves of the binary classification datasets, one line per method (TPR averaged over seeds)."""
    rows = [s for s in full_data_cells(summaries) if s.task == "classification"
            and len(s.records[0].class_names) == 2 and all(r.cases is not None for r in s.records)]
    datasets = list(dict.fromkeys(s.dataset for s in rows))
    if not datasets:
        return None
    grid = np.linspace(0, 1, 201)
    figure, axes = plt.subplots(1, len(datasets), squeeze=False, figsize=(4.2 * len(datasets), 4))
    for axis, dataset in zip(axes.flat, datasets, strict=True):
        for s in (row for row in rows if row.dataset == dataset):
            curves = []
            for record in s.records:
                arrays = case_arrays(record.cases, "classification", record.class_names)
                fpr, tpr = roc_points(arrays["probabilities"][:, 1], arrays["labels"] == 1)
                curves.append(np.interp(grid, fpr, tpr))
            auroc = s.mean.get("auroc", np.nan)
            axis.plot(grid, np.mean(curves, axis=0), label=f"{s.method} (AUROC {auroc:.3f})")
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel("1 - specificity")
        axis.set_ylabel("sensitivity")
        axis.set_title(dataset)
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def case_montage(summaries: list[CellSummary], dataset: str, path: Path) -> Path | None:
    """Best and worst test cases of each method (first seed's run): one row per method."""
    rows = [s for s in full_data_cells(summaries) if s.dataset == dataset]
    tiles: list[tuple[str, list[Path]]] = []
    for s in rows:
        record = min(s.records, key=lambda r: r.seed)
        folder = record.directory / "test_cases"
        images = [folder / f"{kind}-{rank}.png" for kind in ("best", "worst") for rank in (1, 2)]
        if all(image.is_file() for image in images):
            tiles.append((s.method, images))
    if not tiles:
        return None
    figure, axes = plt.subplots(len(tiles), 4, squeeze=False, figsize=(10, 2.7 * len(tiles)))
    for r, (method, images) in enumerate(tiles):
        for c, image in enumerate(images):
            with Image.open(image) as picture:
                axes[r, c].imshow(np.asarray(picture.convert("RGB")))
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(("best", "best", "worst", "worst")[c])
        axes[r, 0].set_ylabel(method, fontsize=9)
    figure.suptitle(f"{dataset}: best and worst test cases (green: truth, red: prediction)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_plots(grid: Grid, summaries: list[CellSummary]) -> list[Path]:
    """Every plot of the grid into ``<output>/plots/``; returns the files written."""
    folder = grid.output / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written = [bar_chart(summaries, task, folder / f"bars_{task}.png") for task in ("classification", "segmentation")]
    written += [few_shot_chart(summaries, folder / "few_shot.png"), roc_chart(summaries, folder / "roc.png")]
    written += [case_montage(summaries, dataset, folder / f"cases_{dataset}.png")
                for dataset in dict.fromkeys(s.dataset for s in summaries)]
    return [path for path in written if path is not None]
