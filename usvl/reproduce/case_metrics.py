"""The test metrics recomputed from a run's per-image ``test_cases.csv``, for bootstrap intervals.

The definitions follow the metrics the runs log (``usvl.metrics``): for two classes, binary metrics with class 1 as
the positive class at probability 0.5; for more, micro accuracy and macro one-vs-rest AUROC, F1, sensitivity and
specificity; for segmentation, means of the per-image Dice and IoU over all images and of HD95 and ASD over the
images with a lesion. A test checks that these equal the logged values on the same run.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.stats import rankdata

CLASSIFICATION_METRICS = ("accuracy", "auroc", "f1", "sensitivity", "specificity")
SEGMENTATION_METRICS = ("dice", "iou", "hd95_lesion", "asd_lesion")


def binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when one class is absent."""
    n_positive = int(positive.sum())
    n_negative = positive.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def confusion_rates(predicted: np.ndarray, positive: np.ndarray) -> tuple[float, float, float]:
    """Sensitivity, specificity and F1 of boolean predictions against boolean truth (0 when undefined)."""
    tp = float(np.sum(predicted & positive))
    fp = float(np.sum(predicted & ~positive))
    fn = float(np.sum(~predicted & positive))
    tn = float(np.sum(~predicted & ~positive))
    return _ratio(tp, tp + fn), _ratio(tn, tn + fp), _ratio(2 * tp, 2 * tp + fp + fn)


def classification_scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, AUROC, F1, sensitivity and specificity of ``[N, K]`` probabilities and ``[N]`` integer labels.

    With ``K >= 3`` the result also has ``auroc_<k>``, ``sensitivity_<k>`` and ``specificity_<k>`` per class index.
    """
    classes = probabilities.shape[1]
    if classes == 2:
        positive = labels == 1
        predicted = probabilities[:, 1] >= 0.5
        sensitivity, specificity, f1 = confusion_rates(predicted, positive)
        return {"accuracy": float(np.mean(predicted == positive)), "auroc": binary_auroc(probabilities[:, 1], positive),
                "f1": f1, "sensitivity": sensitivity, "specificity": specificity}
    predicted_class = probabilities.argmax(axis=1)
    scores: dict[str, float] = {"accuracy": float(np.mean(predicted_class == labels))}
    per_class = {"auroc": [], "f1": [], "sensitivity": [], "specificity": []}
    for k in range(classes):
        positive = labels == k
        sensitivity, specificity, f1 = confusion_rates(predicted_class == k, positive)
        auroc = binary_auroc(probabilities[:, k], positive)
        for name, value in (("auroc", auroc), ("f1", f1), ("sensitivity", sensitivity),
                            ("specificity", specificity)):
            per_class[name].append(value)
            if name != "f1":
                scores[f"{name}_{k}"] = value
    scores.update({name: float(np.nanmean(values)) for name, values in per_class.items()})
    return scores


def segmentation_scores_from_arrays(dice: np.ndarray, iou: np.ndarray, hd95: np.ndarray, asd: np.ndarray,
                                    lesion: np.ndarray) -> dict[str, float]:
    """Mean Dice and IoU over all images, mean HD95 and ASD over images with a lesion (NaN when there are none)."""
    return {
        "dice": float(dice.mean()),
        "iou": float(iou.mean()),
        "hd95_lesion": float(hd95[lesion].mean()) if lesion.any() else float("nan"),
        "asd_lesion": float(asd[lesion].mean()) if lesion.any() else float("nan"),
    }


def case_arrays(cases: pd.DataFrame, task: str, class_names: list[str]) -> dict[str, np.ndarray]:
    """The arrays the metrics of one run's ``test_cases.csv`` need, one entry per image.

    Classification: ``probabilities`` ``[N, K]`` and integer ``labels``; segmentation: ``dice``, ``iou``,
    ``hd95``, ``asd`` and the boolean ``lesion`` (ground truth non-empty).

    Raises:
        KeyError: A column is missing, or a label is not among ``class_names``.
    """
    if task == "segmentation":
        missing = [c for c in ("dice", "iou", "hd95", "asd", "true_pixels") if c not in cases]
        if missing:
            raise KeyError(f"test_cases.csv lacks columns {missing}")
        arrays = {name: cases[name].to_numpy(dtype=float) for name in ("dice", "iou", "hd95", "asd")}
        return {**arrays, "lesion": cases["true_pixels"].to_numpy() > 0}
    columns = [f"p_{name}" for name in class_names]
    missing = [column for column in [*columns, "label"] if column not in cases]
    if missing:
        raise KeyError(f"test_cases.csv lacks columns {missing}")
    index = {name: k for k, name in enumerate(class_names)}
    unknown = sorted(set(cases["label"].astype(str)) - set(index))
    if unknown:
        raise KeyError(f"test_cases.csv has labels {unknown} outside the classes {class_names}")
    return {"probabilities": cases[columns].to_numpy(dtype=float),
            "labels": cases["label"].astype(str).map(index).to_numpy()}


def scores_of_arrays(arrays: dict[str, np.ndarray], picks: np.ndarray | None = None) -> dict[str, float]:
    """The metrics of one run's case arrays (:func:`case_arrays`), on the images ``picks`` (default: all)."""
    chosen = {name: values if picks is None else values[picks] for name, values in arrays.items()}
    if "probabilities" in chosen:
        return classification_scores(chosen["probabilities"], chosen["labels"])
    return segmentation_scores_from_arrays(**chosen)


def scores_of_cases(cases: pd.DataFrame, task: str, class_names: list[str]) -> dict[str, float]:
    """The task's metrics recomputed from one run's ``test_cases.csv``."""
    return scores_of_arrays(case_arrays(cases, task, class_names))


def bootstrap_interval(runs: list[pd.DataFrame], task: str, class_names: list[str], resamples: int = 1000,
                       seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of the seed-averaged metrics, resampling test images.

    The runs of a cell share one test set; each resample draws the same images (with replacement) for every run,
    recomputes each run's metrics on them and averages over runs, so the interval reflects the test set's size
    (the seeds' spread is the table's ± std). Runs whose images differ from the first run's are left out.

    Args:
        runs: The cell's ``test_cases.csv`` tables, one per seed.
        task: ``classification`` or ``segmentation``.
        class_names: Class names in label order (classification).
        resamples: Bootstrap resamples.
        seed: Seed of the resampling.
        level: Coverage of the interval.

    Returns:
        ``{metric: (low, high)}``.
    """
    if not runs:
        return {}
    names = sorted(set(runs[0]["name"]))
    aligned = [case_arrays(run.drop_duplicates("name").set_index("name").loc[names].reset_index(), task, class_names)
               for run in runs if set(run["name"]) == set(names)]
    generator = np.random.default_rng(seed)
    collected: dict[str, list[float]] = {}
    with warnings.catch_warnings():
        # A resample without a lesion image (or one class) has an undefined HD95 or AUROC: NaN, left out.
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(resamples):
            picks = generator.integers(0, len(names), len(names))
            per_run = [scores_of_arrays(arrays, picks) for arrays in aligned]
            for metric in per_run[0]:
                collected.setdefault(metric, []).append(float(np.nanmean([scores[metric] for scores in per_run])))
    tail = (1 - level) / 2 * 100
    return {metric: (float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100 - tail)))
            for metric, values in collected.items() if not np.all(np.isnan(values))}
