"""Calibration of classifiers: temperature scaling, operating thresholds, ECE, Brier score and reliability bins.

Conventions used throughout usvl:

- **Probabilities from logits.** Logits are ``[B, K]`` or ``[V, B, K]`` (``V`` views of each image, e.g. the image
  and its mirror image with test-time flipping); probabilities are ``softmax(logits / T)`` averaged over the views.
- **Binary decisions.** With two classes the score is the class-1 (positive, e.g. malignant) probability and an
  image is called positive when ``score >= threshold``. Thresholds chosen on validation lie midway between the two
  validation scores they separate, so ``>`` and ``>=`` agree on the validation set.
- **ECE** (15 equal-width bins, L1): with two classes, of the positive-class probability against the positive
  frequency (the reliability of "p(malignant)"); with more classes, of the top-label confidence against the
  accuracy (torchmetrics' definitions).
- **Brier score**: with two classes ``mean((p_1 - y)^2)``; with more classes ``mean(sum_k (p_k - [y = k])^2)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error
from torchmetrics.utilities import dim_zero_cat

log = logging.getLogger(__name__)

ECE_BINS = 15
"""Bins of the expected calibration error and of the reliability diagram."""

SCALINGS = ("temperature", "temperature_bias")
"""How validation logits are rescaled: one temperature (Guo et al., 2017), or a temperature and a bias per class
(bias-corrected temperature scaling, Alexandari et al., 2020: ``softmax(logits / T + b)`` with ``b_0 = 0``; with two
classes this is Platt scaling of the logit difference)."""

THRESHOLD_METHODS = ("youden", "sensitivity")
"""How the binary decision threshold is chosen on validation (see :func:`choose_threshold`)."""

TEMPERATURE_RANGE = (0.01, 100.0)
"""Bounds of the fitted temperature (reached only when the validation logits are perfectly separable or flat)."""


def views(logits: torch.Tensor) -> torch.Tensor:
    """Logits as ``[V, B, K]`` (a single view gets a leading axis of 1).

    Raises:
        ValueError: ``logits`` has neither 2 nor 3 dimensions.
    """
    if logits.ndim == 2:
        return logits[None]
    if logits.ndim != 3:
        raise ValueError(f"Expected logits [B, K] or [V, B, K], got shape {tuple(logits.shape)}")
    return logits


def calibrated_probabilities(logits: torch.Tensor, temperature: float = 1.0,
                             bias: Sequence[float] | None = None) -> torch.Tensor:
    """Class probabilities ``[B, K]``: ``softmax(logits / temperature + bias)`` averaged over the views.

    With ``temperature == 1`` and no ``bias`` the logits are left as they are, so the probabilities are bit for bit
    those of a plain softmax (and flip average).
    """
    logits = views(logits).float()
    if temperature != 1.0:
        logits = logits / temperature
    if bias is not None:
        logits = logits + torch.as_tensor(bias, dtype=logits.dtype, device=logits.device)
    return logits.softmax(dim=-1).mean(dim=0)


def _log_probabilities(logits: torch.Tensor, log_temperature: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """``log(mean_v softmax(logits_v / T + b))`` ``[B, K]``, computed stably from log-softmaxes."""
    scaled = logits / log_temperature.exp()
    if bias is not None:
        scaled = scaled + bias
    log_softmax = scaled.log_softmax(dim=-1)
    return torch.logsumexp(log_softmax, dim=0) - math.log(logits.shape[0])


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature ``T > 0`` that minimises the negative log-likelihood of the labels (temperature scaling).

    One scalar for all classes, fitted by L-BFGS on ``log T`` from ``T = 1`` in float64 (Guo et al., 2017). It does
    not change the predicted class of a single view, nor the ranking of binary scores.

    Args:
        logits: Validation logits ``[B, K]`` or ``[V, B, K]`` (views averaged as in :func:`calibrated_probabilities`).
        labels: Class indices ``[B]``.
        max_iter: L-BFGS iterations.

    Returns:
        The temperature, within :data:`TEMPERATURE_RANGE`.

    Raises:
        ValueError: No logits, or logits and labels of different lengths.
    """
    return _fit_scaling(logits, labels, max_iter, with_bias=False)[0]


def fit_temperature_and_bias(logits: torch.Tensor, labels: torch.Tensor,
                             max_iter: int = 100) -> tuple[float, list[float]]:
    """The temperature and class biases that minimise the validation NLL (bias-corrected temperature scaling).

    ``softmax(logits / T + b)`` with ``b_0 = 0`` (the other ``K - 1`` biases are free), fitted by L-BFGS on
    ``(log T, b)`` from ``(0, 0)`` in float64. Unlike the temperature alone it moves the binary scores (a shift of the
    logit difference), so it can correct probabilities that are too high or too low on average; it keeps their
    ranking.

    Args:
        logits: Validation logits ``[B, K]`` or ``[V, B, K]``.
        labels: Class indices ``[B]``.
        max_iter: L-BFGS iterations.

    Returns:
        The temperature (within :data:`TEMPERATURE_RANGE`) and the ``K`` biases (the first is 0).

    Raises:
        ValueError: No logits, or logits and labels of different lengths.
    """
    return _fit_scaling(logits, labels, max_iter, with_bias=True)


def _fit_scaling(logits: torch.Tensor, labels: torch.Tensor, max_iter: int,
                 with_bias: bool) -> tuple[float, list[float]]:
    """Minimise the NLL of ``softmax(logits / T + b)`` over ``log T`` (and ``b``, with ``b_0 = 0``) by L-BFGS."""
    logits = views(logits).detach().double().cpu()
    labels = labels.detach().long().cpu()
    if logits.shape[1] == 0 or logits.shape[1] != labels.shape[0]:
        raise ValueError(f"Calibration needs as many logits as labels (got {logits.shape[1]} and "
                         f"{labels.shape[0]})")
    low, high = (math.log(bound) for bound in TEMPERATURE_RANGE)
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    free_bias = torch.zeros(logits.shape[-1] - 1 if with_bias else 0, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature, free_bias] if with_bias else [log_temperature], lr=0.5,
                                  max_iter=max_iter, line_search_fn="strong_wolfe")

    def bias() -> torch.Tensor | None:
        return torch.cat([free_bias.new_zeros(1), free_bias]) if with_bias else None

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.nll_loss(_log_probabilities(logits, log_temperature.clamp(low, high), bias()), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    value = float(log_temperature.detach().clamp(low, high))
    biases = [float(b) for b in bias().detach()] if with_bias else [0.0] * logits.shape[-1]
    if not math.isfinite(value) or not all(math.isfinite(b) for b in biases):
        return 1.0, [0.0] * logits.shape[-1]
    return math.exp(value), biases


def negative_log_likelihood(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels under ``[B, K]`` probabilities (clamped at 1e-12)."""
    picked = probabilities.double().gather(1, labels.long()[:, None]).squeeze(1)
    return float(-picked.clamp_min(1e-12).log().mean())


@dataclass(frozen=True)
class RocCut:
    """One way to cut binary scores: the threshold and the validation rates it gives.

    Attributes:
        threshold: Positive when ``score >= threshold``.
        sensitivity: True-positive rate at the threshold.
        specificity: True-negative rate at the threshold.
    """

    threshold: float
    sensitivity: float
    specificity: float


def roc_cuts(scores: torch.Tensor, labels: torch.Tensor) -> list[RocCut]:
    """Every distinct cut of the scores, from the highest threshold (nothing positive) to the lowest (all positive).

    Cut ``i`` calls positive the images whose score is among the ``i`` highest distinct scores; its threshold lies
    midway between the lowest score it keeps and the next lower score (0 below the lowest score; above the highest
    score for cut 0).

    Raises:
        ValueError: The labels do not hold both classes (0 and 1).
    """
    values = scores.detach().double().cpu().numpy()
    truth = labels.detach().cpu().numpy().astype(bool)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"A threshold needs both classes: {positives} positive and {negatives} negative scores")
    distinct = np.unique(values)[::-1]  # descending
    below = np.append(distinct[1:], 0.0)
    top = (distinct[0] + 1.0) / 2 if distinct[0] < 1.0 else math.nextafter(1.0, 2.0)
    thresholds = np.concatenate([[top], (distinct + below) / 2])
    cuts = []
    for threshold in thresholds:
        called = values >= threshold
        cuts.append(RocCut(float(threshold), float((called & truth).sum() / positives),
                           float((~called & ~truth).sum() / negatives)))
    return cuts


def youden_threshold(scores: torch.Tensor, labels: torch.Tensor) -> RocCut:
    """The cut with the highest Youden's J = sensitivity + specificity - 1 (the highest threshold among ties)."""
    cuts = roc_cuts(scores, labels)
    return max(cuts, key=lambda cut: cut.sensitivity + cut.specificity)  # max keeps the first: the highest threshold


def sensitivity_threshold(scores: torch.Tensor, labels: torch.Tensor, target: float) -> RocCut:
    """The highest threshold whose sensitivity reaches ``target`` (the most specific cut that does).

    Raises:
        ValueError: ``target`` is not in (0, 1].
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target}")
    return next(cut for cut in roc_cuts(scores, labels) if cut.sensitivity >= target - 1e-12)


def choose_threshold(scores: torch.Tensor, labels: torch.Tensor,
                     method: Literal["youden", "sensitivity"] = "youden",
                     target_sensitivity: float = 0.9) -> RocCut:
    """The binary operating point chosen on validation scores by ``method`` (``youden`` or ``sensitivity``).

    Raises:
        ValueError: Unknown method, a target outside (0, 1], or labels of one class only.
    """
    if method == "youden":
        return youden_threshold(scores, labels)
    if method == "sensitivity":
        return sensitivity_threshold(scores, labels, target_sensitivity)
    raise ValueError(f"Unknown threshold method {method!r}; choose one of {list(THRESHOLD_METHODS)}")


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE (L1, equal-width bins) of ``[B, K]`` probabilities: of ``p_1`` with two classes, else top-label."""
    probabilities, labels = probabilities.float(), labels.long()
    if probabilities.shape[1] == 2:
        return float(binary_calibration_error(probabilities[:, 1].contiguous(), labels, n_bins=n_bins))
    return float(multiclass_calibration_error(probabilities, labels, probabilities.shape[1], n_bins=n_bins))


def brier_score(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Brier score of ``[B, K]`` probabilities: ``mean((p_1 - y)^2)`` with two classes, else summed over classes."""
    probabilities, labels = probabilities.double(), labels.long()
    if probabilities.shape[1] == 2:
        return float(((probabilities[:, 1] - labels.double()) ** 2).mean())
    onehot = F.one_hot(labels, probabilities.shape[1]).double()
    return float(((probabilities - onehot) ** 2).sum(dim=1).mean())


def reliability_bins(probabilities: torch.Tensor, labels: torch.Tensor,
                     n_bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per bin of the ECE: ``confidence`` (mean predicted probability), ``frequency`` (observed) and ``count``.

    With two classes the binned value is ``p_1`` and the frequency is that of class 1; with more classes it is the
    top-label confidence and the frequency is the accuracy. Empty bins have ``nan`` confidence and frequency.
    """
    probabilities, labels = probabilities.double(), labels.long()
    if probabilities.shape[1] == 2:
        confidence, hit = probabilities[:, 1], labels.double()
    else:
        confidence, predicted = probabilities.max(dim=1)
        hit = (predicted == labels).double()
    index = (confidence * n_bins).long().clamp(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins).double()
    mean_confidence = torch.bincount(index, weights=confidence, minlength=n_bins) / count
    frequency = torch.bincount(index, weights=hit, minlength=n_bins) / count
    return {"confidence": mean_confidence.tolist(), "frequency": frequency.tolist(), "count": count.tolist()}


def operating_point(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """Accuracy, sensitivity and specificity of binary ``scores >= threshold`` (``nan`` for a class with no image)."""
    called = scores.double() >= threshold
    truth = labels.bool()
    positives, negatives = int(truth.sum()), int((~truth).sum())
    return {
        "accuracy": float((called == truth).double().mean()) if len(truth) else math.nan,
        "sensitivity": float((called & truth).sum()) / positives if positives else math.nan,
        "specificity": float((~called & ~truth).sum()) / negatives if negatives else math.nan,
    }


def calibration_summary(probabilities: torch.Tensor, labels: torch.Tensor,
                        threshold: float | None = None) -> dict[str, float]:
    """ECE, Brier score and NLL of ``[B, K]`` probabilities, and with two classes and a threshold the operating point.

    Returns:
        ``ece``, ``brier``, ``nll``, and ``accuracy_at_threshold``, ``sensitivity_at_threshold``,
        ``specificity_at_threshold`` when ``threshold`` is given and there are two classes.
    """
    summary = {"ece": expected_calibration_error(probabilities, labels), "brier": brier_score(probabilities, labels),
               "nll": negative_log_likelihood(probabilities, labels)}
    if threshold is not None and probabilities.shape[1] == 2:
        point = operating_point(probabilities[:, 1], labels, threshold)
        summary.update({f"{name}_at_threshold": value for name, value in point.items()})
    return summary


class CalibrationMetrics(Metric):
    """Accumulates calibrated and uncalibrated ``[B, K]`` probabilities with their labels; computes their summaries.

    :meth:`compute` returns :func:`calibration_summary` of the calibrated probabilities (at :attr:`threshold`, set
    before computing) and ``ece_uncalibrated``, ``brier_uncalibrated``; :attr:`bins` then holds the
    :func:`reliability_bins` of both, for a reliability diagram. States are concatenated across processes.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("calibrated", default=[], dist_reduce_fx="cat")
        self.add_state("uncalibrated", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.threshold: float | None = None
        self.bins: dict[str, dict[str, list[float]]] = {}

    def update(self, calibrated: torch.Tensor, uncalibrated: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: calibrated and uncalibrated probabilities ``[B, K]`` and labels ``[B]``."""
        self.calibrated.append(calibrated.detach().float())
        self.uncalibrated.append(uncalibrated.detach().float())
        self.target.append(target.detach().long())

    def compute(self) -> dict[str, float]:
        """The calibrated summary, the uncalibrated ECE and Brier score; fills :attr:`bins`."""
        calibrated, uncalibrated = dim_zero_cat(self.calibrated).cpu(), dim_zero_cat(self.uncalibrated).cpu()
        target = dim_zero_cat(self.target).cpu()
        summary = calibration_summary(calibrated, target, self.threshold)
        summary["ece_uncalibrated"] = expected_calibration_error(uncalibrated, target)
        summary["brier_uncalibrated"] = brier_score(uncalibrated, target)
        self.bins = {"calibrated": reliability_bins(calibrated, target),
                     "uncalibrated": reliability_bins(uncalibrated, target)}
        return summary


def fit_calibration(logits: torch.Tensor, labels: torch.Tensor,
                    method: Literal["youden", "sensitivity"] = "youden",
                    target_sensitivity: float = 0.9,
                    scaling: Literal["temperature", "temperature_bias"] = "temperature") -> dict[str, object]:
    """Fit the temperature (and biases) and, with two classes, choose the decision threshold on validation logits.

    Args:
        logits: Validation logits ``[B, K]`` or ``[V, B, K]``.
        labels: Their class indices ``[B]``.
        method: ``youden`` (the cut with the highest sensitivity + specificity) or ``sensitivity`` (the highest
            threshold reaching ``target_sensitivity``), on the calibrated class-1 probability.
        target_sensitivity: The sensitivity the ``sensitivity`` method must reach.
        scaling: ``temperature`` or ``temperature_bias`` (:data:`SCALINGS`).

    Returns:
        The calibration record: ``scaling``, ``temperature`` and ``bias`` (``None`` for ``temperature``);
        ``threshold`` (``None`` with more than two classes, where the decision is the argmax; 0.5 when the
        validation labels hold one class only) and ``threshold_method`` (``youden``, ``sensitivity``, ``argmax`` or
        ``default``); ``target_sensitivity`` (sensitivity method only); ``validation_images``; ``validation``: NLL,
        ECE and Brier score before (``*_uncalibrated``) and after calibration, and the accuracy, sensitivity and
        specificity at the threshold.

    Raises:
        ValueError: Unknown method or scaling, or a target sensitivity outside (0, 1].
    """
    if scaling not in SCALINGS:
        raise ValueError(f"Unknown scaling {scaling!r}; choose one of {list(SCALINGS)}")
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"Unknown threshold method {method!r}; choose one of {list(THRESHOLD_METHODS)}")
    if method == "sensitivity" and not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target_sensitivity}")
    bias: list[float] | None = None
    if scaling == "temperature_bias":
        temperature, bias = fit_temperature_and_bias(logits, labels)
    else:
        temperature = fit_temperature(logits, labels)
    calibrated = calibrated_probabilities(logits.cpu(), temperature, bias)
    plain = calibrated_probabilities(logits.cpu())
    labels = labels.cpu().long()
    threshold: float | None = None
    how = "argmax"
    if calibrated.shape[1] == 2:
        try:
            threshold, how = choose_threshold(calibrated[:, 1], labels, method, target_sensitivity).threshold, method
        except ValueError as error:
            threshold, how = 0.5, "default"
            log.warning("No threshold chosen on validation (%s); using 0.5", error)
    validation = calibration_summary(calibrated, labels, threshold)
    validation.update(nll_uncalibrated=negative_log_likelihood(plain, labels),
                      ece_uncalibrated=expected_calibration_error(plain, labels),
                      brier_uncalibrated=brier_score(plain, labels))
    return {"scaling": scaling, "temperature": temperature, "bias": bias, "threshold": threshold,
            "threshold_method": how,
            "target_sensitivity": target_sensitivity if method == "sensitivity" else None,
            "validation_images": int(labels.numel()), "validation": validation}
