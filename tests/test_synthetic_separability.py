"""Separability audits of the synthetic generator (slow): ceiling, shortcut, threshold segmentation."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from scipy import ndimage

from usvl.data.synthetic import PRESETS, render_sample

N_IMAGES = 400
SIZE = 128


@lru_cache(maxsize=4)
def _samples(preset: str, n: int = N_IMAGES, size: int = SIZE) -> list:
    names = PRESETS[preset].class_names[:2]  # benign / malignant only
    return [render_sample(preset, 10_000 + i, size=size, label=names[i % 2]) for i in range(n)]


def _cv_auc(model, x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(model, x, y, cv=cv, scoring="roc_auc").mean())


def _labels(samples: list) -> np.ndarray:
    return np.array([s.label == "malignant" for s in samples], int)


def descriptor_ceiling(samples: list) -> float:
    from sklearn.linear_model import LogisticRegression

    skip = {"tirads_points", "tirads_category", "finding"}
    keys = [k for k in samples[0].descriptors if k not in skip]
    cats = {k: sorted({s.descriptors[k] for s in samples}) for k in keys}
    x = np.array([[s.descriptors[k] == v for k in keys for v in cats[k]] for s in samples], float)
    return _cv_auc(LogisticRegression(max_iter=2000), x, _labels(samples))


def global_stats(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float32)
    pct = np.percentile(f, [1, 5, 10, 25, 50, 75, 90, 95, 99])
    hist = np.histogram(f, bins=32, range=(0, 256))[0] / f.size
    return np.concatenate([[f.mean(), f.std()], pct, hist])


def shortcut_auc(samples: list) -> float:
    from sklearn.ensemble import RandomForestClassifier

    x = np.stack([global_stats(s.image) for s in samples])
    return _cv_auc(RandomForestClassifier(300, random_state=0, n_jobs=1), x, _labels(samples))


def _otsu(img: np.ndarray) -> float:
    hist = np.bincount(img.ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    w = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * w - mu) ** 2 / (w * (1 - w) + 1e-12)
    return float(np.argmax(between))


def _largest_dark_component(img: np.ndarray, thr: float) -> np.ndarray:
    fg = ndimage.binary_opening(img <= thr, iterations=1)
    lab, n = ndimage.label(fg)
    if n == 0:
        return fg
    sizes = ndimage.sum(fg, lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum() + 1e-9))


def threshold_dice(samples: list) -> dict[str, float]:
    """Mean Dice of Otsu (dark) + largest component, and of the best single global threshold."""
    otsu = [_dice(_largest_dark_component(s.image, _otsu(s.image)), s.mask.astype(bool)) for s in samples]
    best = 0.0
    for thr in range(10, 200, 10):
        best = max(
            best, float(np.mean([_dice(_largest_dark_component(s.image, thr), s.mask > 0) for s in samples]))
        )
    return {"otsu": float(np.mean(otsu)), "best_global": best}


def tirads_stats(samples: list) -> tuple[float, dict]:
    from sklearn.metrics import roc_auc_score

    y = _labels(samples)
    tr = np.array([int(s.descriptors["tirads_category"][2]) for s in samples])
    table = {
        c: [int(np.sum(tr[y == i] == k)) for k in range(1, 6)] for i, c in enumerate(("benign", "malignant"))
    }
    return float(roc_auc_score(y, tr)), table


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["thyroid", "breast"])
def test_descriptor_ceiling(preset):
    auc = descriptor_ceiling(_samples(preset))
    assert 0.92 <= auc <= 0.965, auc


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["thyroid", "breast"])
def test_global_statistics_shortcut(preset):
    assert shortcut_auc(_samples(preset)) <= 0.60


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["thyroid", "breast"])
def test_threshold_segmentation_is_weak(preset):
    d = threshold_dice(_samples(preset))
    assert d["otsu"] <= 0.45 and d["best_global"] <= 0.45, d


@pytest.mark.slow
def test_tirads_category_auc():
    auc, _ = tirads_stats(_samples("thyroid"))
    assert 0.87 <= auc <= 0.95, auc


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or ["thyroid", "breast"]:
        s = _samples(name)
        print(
            name,
            "ceiling",
            round(descriptor_ceiling(s), 4),
            "shortcut",
            round(shortcut_auc(s), 4),
            "dice",
            threshold_dice(s),
            flush=True,
        )
        if name == "thyroid":
            print("TR", tirads_stats(s), flush=True)
