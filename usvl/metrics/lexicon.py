"""Metrics of lexicon descriptor predictions: descriptor and category agreement, and the points score's AUROC.

Per-descriptor accuracy and Cohen's kappa, category agreement, and the AUROC of the lexicon's points score next to
the direct classifier's.

Kappa conventions: descriptors are nominal, so their kappa is unweighted; a multi-label descriptor (echogenic foci,
calcifications) reports the mean over its values of the binary kappa of each value (present or not), and as accuracy
the fraction of images whose whole set of values is right. Categories (TR1-TR5, BI-RADS-like levels) are ordinal:
``category_kappa_quadratic`` (quadratic weights ``((i - j) / (K - 1))^2``, the usual choice for ordinal reader
agreement and the one BENCHMARKS.md quotes) and ``category_kappa_linear`` (``|i - j| / (K - 1)``) are both
reported. A kappa with no expected disagreement (every image and prediction in one value) is undefined: NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc

from usvl.lexicon import Lexicon

__all__ = ["LexiconMetrics", "cohen_kappa"]


def cohen_kappa(predictions: torch.Tensor, targets: torch.Tensor, num_values: int,
                weights: str | None = None) -> float:
    """Cohen's kappa of two integer ratings in ``[0, num_values)``; NaN when undefined.

    Args:
        predictions: Predicted values ``[N]``.
        targets: True values ``[N]``.
        num_values: Number of possible values.
        weights: None (nominal), ``linear`` or ``quadratic`` (ordinal values).
    """
    if predictions.numel() == 0:
        return math.nan
    confusion = torch.zeros(num_values, num_values, dtype=torch.float64)
    confusion.index_put_((targets.long().cpu(), predictions.long().cpu()),
                         torch.ones(predictions.numel(), dtype=torch.float64), accumulate=True)
    observed = confusion / confusion.sum()
    expected = observed.sum(dim=1, keepdim=True) @ observed.sum(dim=0, keepdim=True)
    index = torch.arange(num_values, dtype=torch.float64)
    distance = (index[:, None] - index[None, :]).abs() / max(num_values - 1, 1)
    if weights is None:
        weight = (distance > 0).double()
    elif weights == "linear":
        weight = distance
    elif weights == "quadratic":
        weight = distance**2
    else:
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', not {weights!r}")
    chance = float((weight * expected).sum())
    return math.nan if chance <= 1e-12 else 1.0 - float((weight * observed).sum()) / chance


def _auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """AUROC of ``scores`` for ``positive`` (bool), NaN unless both classes occur."""
    if positive.numel() == 0 or bool(positive.all()) or not bool(positive.any()):
        return math.nan
    return float(binary_auroc(scores.float(), positive.long()))


class LexiconMetrics(Metric):
    """Descriptor, category and score metrics of a lexicon's descriptor heads over a stage.

    ``update`` takes the predicted descriptor probabilities, the encoded targets (missing ones masked, see
    :meth:`usvl.lexicon.Lexicon.encode_targets`), the classifier's probability of the positive class and the labels.
    ``compute`` returns (names without the stage prefix):

    * ``<descriptor>_accuracy``, ``<descriptor>_kappa`` for every descriptor, over the images that have it;
    * ``category_accuracy``, ``category_kappa_quadratic``, ``category_kappa_linear``: the category of the predicted
      descriptors (most probable values, multi values at p >= 0.5) against the category of the true ones, over the
      images with every descriptor;
    * ``points_mae``: mean absolute error of the expected points against the true points (same images);
    * ``score_auroc``: AUROC of the expected points (the lexicon's malignancy score) for the positive class
      (``malignant``) against the rest, over the labelled images; ``classifier_auroc``: the same for the
      classifier's probability of that class, on the same images.

    Args:
        lexicon: The lexicon of the heads.
        positive_class: Index of the class the score predicts, or None (no AUROCs).
    """

    full_state_update = False

    def __init__(self, lexicon: Lexicon, positive_class: int | None) -> None:
        super().__init__()
        self.lexicon = lexicon
        self.positive_class = positive_class
        for name in lexicon.descriptors:
            self.add_state(f"pred_{name}", default=[], dist_reduce_fx="cat")
            self.add_state(f"true_{name}", default=[], dist_reduce_fx="cat")
        for name in ("expected_points", "true_points", "pred_category", "true_category", "classifier", "labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, probabilities: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
               positive_probability: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add a batch: descriptor probabilities ``[B, values]``, encoded targets, ``p(positive)`` ``[B]``, labels."""
        lexicon = self.lexicon
        batch = labels.shape[0]
        for name in lexicon.single:
            getattr(self, f"pred_{name}").append(probabilities[name].argmax(dim=-1).detach())
            getattr(self, f"true_{name}").append(targets[name].detach())
        for name in lexicon.multi:
            getattr(self, f"pred_{name}").append((probabilities[name] >= 0.5).long().detach())
            getattr(self, f"true_{name}").append(targets[name].detach())
        cpu_probabilities = {k: v.detach().float().cpu() for k, v in probabilities.items()}
        cpu_targets = {k: v.detach().cpu() for k, v in targets.items()}
        true_points, true_category, pred_category = [], [], []
        for i in range(batch):
            decided = lexicon.decide({k: v[i].tolist() for k, v in cpu_probabilities.items()})
            points = lexicon.points(decided)
            pred_category.append(lexicon.category_index(lexicon.category(points)))
            truth = lexicon.target_descriptors(cpu_targets, i)
            if truth is None:
                true_points.append(math.nan)
                true_category.append(-1)
            else:
                points = lexicon.points(truth)
                true_points.append(float(points))
                true_category.append(lexicon.category_index(lexicon.category(points)))
        device = labels.device
        self.expected_points.append(lexicon.expected_points(probabilities).detach().float())
        self.true_points.append(torch.tensor(true_points, dtype=torch.float32, device=device))
        self.pred_category.append(torch.tensor(pred_category, dtype=torch.long, device=device))
        self.true_category.append(torch.tensor(true_category, dtype=torch.long, device=device))
        score = positive_probability if positive_probability is not None else torch.full((batch,), math.nan)
        self.classifier.append(score.detach().float().to(device))
        self.labels.append(labels.detach().long())

    @staticmethod
    def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        return torch.cat(state) if isinstance(state, list) else state

    def compute(self) -> dict[str, torch.Tensor]:
        """The metrics (see the class docstring); NaN where undefined (no image, one class only)."""
        lexicon = self.lexicon
        out: dict[str, float] = {}
        for name, values in lexicon.single.items():
            pred, true = self._cat(getattr(self, f"pred_{name}")), self._cat(getattr(self, f"true_{name}"))
            valid = true >= 0
            out[f"{name}_accuracy"] = float((pred[valid] == true[valid]).float().mean()) if valid.any() else math.nan
            out[f"{name}_kappa"] = cohen_kappa(pred[valid], true[valid], len(values))
        for name, values in lexicon.multi.items():
            pred, true = self._cat(getattr(self, f"pred_{name}")), self._cat(getattr(self, f"true_{name}"))
            valid = (true >= 0).all(dim=1)
            pred, true = pred[valid], true[valid].long()
            out[f"{name}_accuracy"] = float((pred == true).all(dim=1).float().mean()) if valid.any() else math.nan
            kappas = [cohen_kappa(pred[:, k], true[:, k], 2) for k in range(len(values))]
            defined = [k for k in kappas if not math.isnan(k)]
            out[f"{name}_kappa"] = sum(defined) / len(defined) if defined else math.nan
        true_category, pred_category = self._cat(self.true_category), self._cat(self.pred_category)
        valid = true_category >= 0
        levels = len(lexicon.categories)
        out["category_accuracy"] = float((pred_category[valid] == true_category[valid]).float().mean()) \
            if valid.any() else math.nan
        out["category_kappa_quadratic"] = cohen_kappa(pred_category[valid], true_category[valid], levels, "quadratic")
        out["category_kappa_linear"] = cohen_kappa(pred_category[valid], true_category[valid], levels, "linear")
        expected, true_points = self._cat(self.expected_points), self._cat(self.true_points)
        known = ~torch.isnan(true_points)
        out["points_mae"] = float((expected[known] - true_points[known]).abs().mean()) if known.any() else math.nan
        if self.positive_class is not None:
            labels = self._cat(self.labels)
            labelled = labels >= 0
            positive = labels[labelled] == self.positive_class
            out["score_auroc"] = _auroc(expected[labelled], positive)
            out["classifier_auroc"] = _auroc(self._cat(self.classifier)[labelled], positive)
        return {name: torch.tensor(value, dtype=torch.float32) for name, value in out.items()}
