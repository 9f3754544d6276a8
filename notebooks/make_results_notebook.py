"""Write ``notebooks/results.ipynb`` (no outputs) from the cells below: ``python notebooks/make_results_notebook.py``.

The notebook is committed without outputs; edit the cells here and rerun this script, so the notebook's diff stays
readable. ``tests/test_notebook.py`` checks that the committed notebook equals what this script writes and runs it
top to bottom on a tiny results folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).with_name("results.ipynb")

CELLS: list[tuple[str, str]] = [
    ("md", """# usvl results

Explore a results folder written by `usvl reproduce` (`make reproduce` → `results/embedded/`,
`make reproduce-quick` → `results/quick/`): the tables, the plots, a comparison of the methods, one run's best and
worst test cases and its training curves. Run it top to bottom; the parameters are in the second code cell."""),
    ("code", """import json
import os
import shlex
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, Markdown, display
from matplotlib.ticker import MaxNLocator
from scipy.stats import ttest_rel
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from usvl.reproduce.aggregate import LOWER_IS_BETTER, METRIC_LABELS

pd.set_option("display.precision", 3)
pd.set_option("display.max_columns", 40)
pd.set_option("display.width", 200)
PRIMARY = {"classification": "auroc", "segmentation": "dice"}  # the headline metric per task, as in the plots"""),
    ("md", """## Parameters

`USVL_RESULTS` (environment variable) names the results folder; without it the notebook reads
`../results/embedded`, else `../results/quick` (relative to `notebooks/`). `ADAPTER` is the method compared seed by
seed against the others; `RUN` picks the run whose test cases and training curves are shown (a folder relative to
the results folder, e.g. `runs/thyroid_cls/mona_hybrid/all/seed1-<hash>`; `None`: the first run of `ADAPTER` on
the whole training split)."""),
    ("code", """RESULTS_ENV = os.environ.get("USVL_RESULTS")
ADAPTER = "mona_hybrid"
RUN = None"""),
    ("code", """def find_results(explicit: str | None) -> Path:
    \"\"\"The results folder: ``explicit`` when given, else ../results/embedded, else ../results/quick.\"\"\"
    if explicit:
        folder = Path(explicit).expanduser()
        if not (folder / "table.csv").is_file():
            raise FileNotFoundError(f"USVL_RESULTS={explicit} has no table.csv: point it at a folder written by "
                                    "`usvl reproduce` (e.g. results/quick)")
        return folder
    candidates = [Path("..") / "results" / "embedded", Path("..") / "results" / "quick"]
    for folder in candidates:
        if (folder / "table.csv").is_file():
            return folder
    started = [str(folder) for folder in candidates if folder.is_dir()]
    hint = (f" ({', '.join(started)} exists but has no table.csv yet: its grid is unfinished; rerun the same make "
            "target, finished runs are skipped)") if started else ""
    raise FileNotFoundError("No results to explore: neither ../results/embedded nor ../results/quick (relative to "
                            f"notebooks/) has a table.csv{hint}. Run `make reproduce-quick` (every dataset x method "
                            "once, about an hour on 2 cores) or `make reproduce`, or set USVL_RESULTS to a results "
                            "folder, then rerun this notebook.")


RESULTS = find_results(RESULTS_ENV).resolve()
print(f"Results folder: {RESULTS}")"""),
    ("md", """## The tables

`table.md` is the results table as the README shows it: per cell (block, dataset, method, training fraction) the
mean ± standard deviation over seeds and a 95 % bootstrap interval over test images. `table.csv` holds the same
numbers as columns (`<metric>_mean`, `_std`, `_ci_low`, `_ci_high`; the standard deviation is empty with one seed),
`runs.csv` one row per finished run."""),
    ("code", """display(Markdown((RESULTS / "table.md").read_text(encoding="utf-8")))"""),
    ("code", """table = pd.read_csv(RESULTS / "table.csv")
try:
    runs = pd.read_csv(RESULTS / "runs.csv")
except pd.errors.EmptyDataError as error:
    raise RuntimeError(f"{RESULTS / 'runs.csv'} lists no finished run yet; rerun the grid's make target") from error
print(f"{len(table)} cells, {len(runs)} finished runs in {runs['run'].nunique()} run folders")
for task, rows in runs.groupby("task", sort=False):
    display(Markdown(f"**runs.csv: {task}**"), rows.dropna(axis=1, how="all"))"""),
    ("md", """## The plots

Written by the aggregation into `plots/`: metric bars (error bars: std over seeds), the few-shot curve, ROC curves
and the best and worst test cases of each method."""),
    ("code", """plots = sorted((RESULTS / "plots").glob("*.png"))
if not plots:
    print(f"No plots in {RESULTS / 'plots'}")
for path in plots:
    display(Markdown(f"**{path.name}**"), Image(filename=str(path)))"""),
    ("md", """## Comparing methods

The headline metric (AUROC for classification, Dice for segmentation) per dataset and method on the whole training
split, and each method's gap to the best method of its row (0: the best; negative: worse)."""),
    ("code", """def mean_std(frame: pd.DataFrame, metric: str) -> pd.Series:
    \"\"\"``mean ± std`` per row (the mean alone when one seed leaves the std undefined, ``—`` when missing).\"\"\"
    std = frame[f"{metric}_std"] if f"{metric}_std" in frame else pd.Series(np.nan, index=frame.index)
    text = [("—" if pd.isna(m) else f"{m:.3f}" if pd.isna(s) else f"{m:.3f} ± {s:.3f}")
            for m, s in zip(frame[f"{metric}_mean"], std, strict=True)]
    return pd.Series(text, index=frame.index)


whole = table[table["fraction"] >= 100]
for task, rows in whole.groupby("task", sort=False):
    metric = PRIMARY[task]
    values = rows.pivot_table(index=["block", "dataset"], columns="method", values=f"{metric}_mean", aggfunc="first",
                              sort=False)
    best = values.min(axis=1) if metric in LOWER_IS_BETTER else values.max(axis=1)
    gap = values.sub(best, axis=0) * (-1 if metric in LOWER_IS_BETTER else 1)
    shown = rows.assign(value=mean_std(rows, metric)).pivot_table(
        index=["block", "dataset"], columns="method", values="value", aggfunc="first", sort=False)
    display(Markdown(f"### {task}: {METRIC_LABELS[metric]} (mean ± std over seeds)"), shown,
            Markdown(f"Gap to the best method of the row ({METRIC_LABELS[metric]})"), gap.round(3))"""),
    ("md", """Accuracy against cost: the headline metric against the trainable parameters (log scale), one point per
dataset and method on the whole training split."""),
    ("code", """tasks = list(dict.fromkeys(whole["task"]))
figure, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False)
for axis, task in zip(axes.flat, tasks, strict=True):
    metric = PRIMARY[task]
    rows = whole[(whole["task"] == task) & (whole["trainable_params_mean"] > 0)]
    for method, points in rows.groupby("method", sort=False):
        axis.scatter(points["trainable_params_mean"], points[f"{metric}_mean"], label=method)
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters")
    axis.set_ylabel(METRIC_LABELS[metric])
    axis.set_title(task)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
figure.tight_layout()
plt.show()"""),
    ("md", """Few-shot: the headline metric per training fraction (% of the training split), for the datasets trained
on more than one fraction."""),
    ("code", """few_shot = table[table["block"] != "main"]
for (task, dataset), rows in few_shot.groupby(["task", "dataset"], sort=False):
    if rows["fraction"].nunique() < 2:
        continue
    metric = PRIMARY[task]
    display(Markdown(f"**{dataset}** ({METRIC_LABELS[metric]}, mean ± std)"),
            rows.assign(value=mean_std(rows, metric)).pivot_table(index="method", columns="fraction", values="value",
                                                                  aggfunc="first"))"""),
    ("md", """### Paired by seed: `ADAPTER` against each other method

Runs with the same seed use the same data split and initialisation, so the per-seed difference of the headline
metric (positive: `ADAPTER` is better) removes the variation the two methods share. With three or more seeds a
paired t-test gives a p-value; with fewer the differences are listed only."""),
    ("code", """per_run = runs.drop_duplicates("run")  # a run shared by two cells of the grid counts once
key = ["block", "dataset", "task", "fraction", "seed"]
mine = per_run[per_run["method"] == ADAPTER]
pairs, summary = [], []
for other in [m for m in dict.fromkeys(per_run["method"]) if m != ADAPTER]:
    both = mine.merge(per_run[per_run["method"] == other], on=key, suffixes=("", "_other"))
    for (block, dataset, task, fraction), group in both.groupby(key[:-1], sort=False):
        metric = PRIMARY[task]
        sign = -1 if metric in LOWER_IS_BETTER else 1
        difference = sign * (group[metric] - group[f"{metric}_other"])
        pairs.append(pd.DataFrame({"dataset": dataset, "fraction": fraction, "other": other, "seed": group["seed"],
                                   "metric": metric, ADAPTER: group[metric], "other value": group[f"{metric}_other"],
                                   "difference": difference}))
        p_value = ttest_rel(group[metric], group[f"{metric}_other"]).pvalue if len(group) >= 3 else np.nan
        summary.append({"block": block, "dataset": dataset, "fraction": fraction, "other": other, "metric": metric,
                        "seeds": len(group), "mean difference": difference.mean(),
                        "std difference": difference.std(ddof=1) if len(group) > 1 else np.nan,
                        f"{ADAPTER} better": f"{int((difference > 0).sum())}/{len(group)}", "p (paired t)": p_value})
if summary:
    display(pd.concat(pairs, ignore_index=True), pd.DataFrame(summary))
else:
    print(f"No seed has both {ADAPTER} and another method; methods with runs: {sorted(set(per_run['method']))}")"""),
    ("md", """## One run: its test cases

The run chosen by `RUN`: its test metrics, the command that trained it, the lowest-ranked test cases
(`test_cases.csv`, ranked by the probability of the true class or by Dice) and the overlays of the best and worst
cases (segmentation: green truth, red prediction)."""),
    ("code", """def pick_run(runs: pd.DataFrame, adapter: str, explicit: str | None) -> Path:
    \"\"\"The run folder: ``explicit``, else the first run of ``adapter`` on the whole training split.\"\"\"
    if explicit:
        return RESULTS / explicit
    whole_split = runs[runs["fraction"] >= 100]
    preferred = whole_split[whole_split["method"] == adapter]
    row = next(frame for frame in (preferred, whole_split, runs) if len(frame)).iloc[0]
    return RESULTS / row["run"]


RUN_DIR = pick_run(runs, ADAPTER, RUN)
record = json.loads((RUN_DIR / "run.json").read_text(encoding="utf-8"))
print(f"Run: {RUN_DIR.relative_to(RESULTS)} ({record['task']})")
print("Trained by: python " + shlex.join(record["command"]))
test_metrics = json.loads((RUN_DIR / "test_metrics.json").read_text(encoding="utf-8"))
display(pd.Series(test_metrics["metrics"], name="test").to_frame())"""),
    ("code", """cases = pd.read_csv(RUN_DIR / "test_cases.csv")
rank = "p_true" if "p_true" in cases else "dice"
display(Markdown(f"Lowest `{rank}` of {len(cases)} test images"), cases.sort_values(rank).head(5))
overlays = sorted((RUN_DIR / "test_cases").glob("*.png"))
if overlays:
    figure, axes = plt.subplots(1, len(overlays), figsize=(3 * len(overlays), 3.3), squeeze=False)
    for axis, path in zip(axes.flat, overlays, strict=True):
        axis.imshow(plt.imread(path))
        axis.set_title(path.stem)
        axis.axis("off")
    figure.tight_layout()
    plt.show()
else:
    print(f"No overlays in {RUN_DIR / 'test_cases'} (the run was trained with overlays=0)")"""),
    ("md", """## One run: its training curves

The TensorBoard event files in the run folder, read with `EventAccumulator`: every scalar tag, then the training and
validation loss and the validation headline metric per epoch (`tensorboard --logdir <run folder>` shows the same)."""),
    ("code", """events = EventAccumulator(str(RUN_DIR), size_guidance={"scalars": 0})  # 0: keep every point
events.Reload()
tags = events.Tags()["scalars"]
print("Scalar tags:", ", ".join(tags))


def scalar(tag: str) -> pd.DataFrame:
    \"\"\"One tag's points as a ``step``, ``value`` frame.\"\"\"
    return pd.DataFrame([(event.step, event.value) for event in events.Scalars(tag)], columns=["step", "value"])


epoch_of_step = scalar("epoch").groupby("step")["value"].min()


def per_epoch(tag: str) -> pd.Series:
    \"\"\"The last value of ``tag`` in each epoch (epoch-level tags have one).\"\"\"
    points = scalar(tag)
    return points.groupby(points["step"].map(epoch_of_step).astype(int))["value"].last().rename(tag)


metric = PRIMARY[record["task"]]
train_loss = "train/loss_epoch" if "train/loss_epoch" in tags else "train/loss"
wanted = [tag for tag in (train_loss, "val/loss", f"val/{metric}") if tag in tags]
curves = pd.concat([per_epoch(tag) for tag in wanted], axis=1).rename_axis("epoch")
display(curves)"""),
    ("code", """figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 3.5))
for tag in (train_loss, "val/loss"):
    if tag in curves:
        loss_axis.plot(curves.index, curves[tag], marker="o", label=tag)
loss_axis.set_title("loss")
if f"val/{metric}" in curves:
    metric_axis.plot(curves.index, curves[f"val/{metric}"], marker="o", color="tab:green")
metric_axis.set_title(f"validation {METRIC_LABELS[metric]}")
for axis in (loss_axis, metric_axis):
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlim(curves.index.min() - 0.5, curves.index.max() + 0.5)
    axis.grid(alpha=0.3)
loss_axis.legend()
figure.suptitle(str(RUN_DIR.relative_to(RESULTS)), fontsize=9)
figure.tight_layout()
plt.show()"""),
]


def build() -> nbformat.NotebookNode:
    """The notebook of :data:`CELLS`, without outputs; the parameter cell is tagged ``parameters`` (papermill)."""
    cells = []
    for kind, source in CELLS:
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        if source.startswith("RESULTS_ENV"):
            cell.metadata["tags"] = ["parameters"]
        cells.append(cell)
    notebook = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index:02d}"  # stable ids: regenerating does not change the file
    return notebook


def main() -> int:
    """Write the notebook next to this script."""
    nbformat.write(build(), NOTEBOOK)
    print(f"Wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
