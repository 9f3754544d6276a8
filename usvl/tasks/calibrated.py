"""CalibratedClassifier: the shared evaluation of classification tasks, with a stored temperature and threshold.

A classification task computes logits per view (the image, and its mirror image with ``test_time_flip``). Its
evaluation metrics (``val/*``, ``test/accuracy``, ``test/auroc``, ...) and loss are computed on the plain softmax
probabilities, as they always were, so results stay comparable. A calibration record — a temperature fitted on the
validation split after fit and, with two classes, a decision threshold chosen there (see
:class:`usvl.callbacks.Calibration` and :func:`usvl.metrics.calibration.fit_calibration`) — is kept in
:attr:`CalibratedClassifier.calibration` and in the checkpoint (``checkpoint["usvl"]["calibration"]``), and used by:

- ``test``: ``test/ece``, ``test/brier`` and ``test/nll_calibrated`` of the calibrated probabilities,
  ``test/ece_uncalibrated`` and ``test/brier_uncalibrated`` of the plain ones, and with two classes and a stored
  threshold ``test/{accuracy,sensitivity,specificity}_at_threshold`` (``test/accuracy`` etc. stay at 0.5);
- ``predict``: calibrated probabilities, and the class at the stored threshold (two classes; argmax otherwise).

Without a record (an older checkpoint, calibration disabled) the temperature is 1 and the decision is the argmax.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from usvl.metrics.calibration import CalibrationMetrics, calibrated_probabilities
from usvl.tasks.base import AdaptedEncoderTask, StepOutput

log = logging.getLogger(__name__)


class CalibratedClassifier(AdaptedEncoderTask):
    """Base of the classification tasks: view logits, plain and calibrated probabilities, the stored calibration.

    Subclasses implement ``forward`` (class logits ``[B, K]``), set :attr:`test_time_flip` and call
    :meth:`init_calibration` in ``__init__``.
    """

    test_time_flip: bool = False
    """Average the probabilities of each image and its lateral (horizontal) mirror image in evaluation."""

    def init_calibration(self) -> None:
        """Start without a calibration record; add the test-time calibration metrics."""
        self.calibration: dict[str, Any] | None = None
        self.test_calibration = CalibrationMetrics()
        self.test_reliability: dict[str, Any] | None = None

    @property
    def temperature(self) -> float:
        """The stored temperature (1 without a calibration record)."""
        return float((self.calibration or {}).get("temperature") or 1.0)

    @property
    def decision_threshold(self) -> float | None:
        """The stored threshold on the class-1 probability (``None``: no record, or more than two classes)."""
        threshold = (self.calibration or {}).get("threshold")
        return None if threshold is None else float(threshold)

    def view_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Float logits ``[V, B, K]``: of the images, and of their mirror images with ``test_time_flip``."""
        logits = [self(images)]
        if self.test_time_flip:
            logits.append(self(images.flip(-1)))
        return torch.stack(logits).float()

    def predict_probabilities(self, images: torch.Tensor, calibrated: bool = False) -> torch.Tensor:
        """Class probabilities ``[B, K]`` (flip-averaged with ``test_time_flip``), calibrated when asked."""
        return calibrated_probabilities(self.view_logits(images), self.temperature if calibrated else 1.0)

    def decide(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Predicted classes ``[B]``: class 1 when ``p_1 >= decision_threshold`` (two classes), else the argmax."""
        threshold = self.decision_threshold
        if threshold is None or probabilities.shape[1] != 2:
            return probabilities.argmax(dim=-1)
        return (probabilities[:, 1] >= threshold).long()

    def probability_step(self, batch: dict[str, Any], stage: str) -> StepOutput:
        """An evaluation step: the NLL of the plain probabilities and the metric inputs.

        The metrics get the class-1 probability with two classes, else all of them; in ``test`` the calibration
        metrics also get the calibrated probabilities.
        """
        labels = batch["label"]
        logits = self.view_logits(batch["image"])
        probabilities = calibrated_probabilities(logits)
        loss = self.loss(probabilities.clamp_min(1e-8).log(), labels)
        if stage == "test":
            self.test_calibration.update(calibrated_probabilities(logits, self.temperature), probabilities, labels)
        return StepOutput(loss, probabilities[:, 1] if self.num_classes == 2 else probabilities, labels)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Image names, calibrated class probabilities, the decided class and the threshold used (or ``None``)."""
        probabilities = self.predict_probabilities(batch["image"], calibrated=True)
        threshold = self.decision_threshold if probabilities.shape[1] == 2 else None
        return {"name": batch["name"], "probabilities": probabilities.cpu(),
                "prediction": self.decide(probabilities).cpu(), "threshold": threshold}

    def on_test_epoch_start(self) -> None:
        """Forget the calibration metrics of an earlier test."""
        self.test_calibration.reset()
        self.test_reliability = None

    def on_test_epoch_end(self) -> None:
        """Log the test metrics, then the calibration metrics; keep the reliability bins for the diagram."""
        super().on_test_epoch_end()
        if not self.test_calibration.update_called:
            return
        self.test_calibration.threshold = self.decision_threshold
        values = self.test_calibration.compute()
        self.log_dict({f"test/{name}": value for name, value in values.items() if name != "nll"})
        self.log("test/nll_calibrated", values["nll"])
        self.test_reliability = {"bins": self.test_calibration.bins, "num_classes": self.num_classes,
                                 "temperature": self.temperature, "threshold": self.decision_threshold,
                                 "ece": values["ece"], "ece_uncalibrated": values["ece_uncalibrated"]}
        self.test_calibration.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also store the calibration record, when there is one."""
        super().on_save_checkpoint(checkpoint)
        if self.calibration:
            checkpoint["usvl"]["calibration"] = dict(self.calibration)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also take the checkpoint's calibration record (none in checkpoints saved before calibration)."""
        super().on_load_checkpoint(checkpoint)
        record = checkpoint.get("usvl", {}).get("calibration")
        self.calibration = dict(record) if record else None
