"""Classification metric collections: accuracy, AUROC, F1, sensitivity and specificity."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryRecall,
    BinarySpecificity,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassRecall,
    MulticlassSpecificity,
)

__all__ = ["classification_metrics"]


def classification_metrics(num_classes: int) -> MetricCollection:
    """Accuracy, AUROC, F1, sensitivity and specificity.

    With two classes the metrics are binary with class 1 (e.g. malignant) as the positive class and take the
    positive-class probability; with more classes they are macro averages over one-vs-rest and take the
    ``[B, K]`` probabilities.
    """
    if num_classes == 2:
        return MetricCollection(
            {
                "accuracy": BinaryAccuracy(),
                "auroc": BinaryAUROC(),
                "f1": BinaryF1Score(),
                "sensitivity": BinaryRecall(),
                "specificity": BinarySpecificity(),
            }
        )
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "auroc": MulticlassAUROC(num_classes),
            "f1": MulticlassF1Score(num_classes),
            "sensitivity": MulticlassRecall(num_classes),
            "specificity": MulticlassSpecificity(num_classes),
        }
    )
