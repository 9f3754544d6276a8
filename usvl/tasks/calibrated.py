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

Classifiers also hold the frozen-feature cache (switch ``feature_cache``, see :mod:`usvl.tasks.feature_cache`):
where nothing before the head changes, the image tower runs once per image and later epochs and runs read its
pooled features instead.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn

from usvl.metrics.calibration import CalibrationMetrics, calibrated_probabilities
from usvl.models.encoders.base import ImageFeatures
from usvl.tasks.base import AdaptedEncoderTask, StepOutput
from usvl.tasks.feature_cache import FrozenFeatures, open_frozen_features

log = logging.getLogger(__name__)


class CalibratedClassifier(AdaptedEncoderTask):
    """Base of the classification tasks: view logits, plain and calibrated probabilities, the stored calibration.

    Subclasses implement :meth:`classify` (class logits ``[B, K]`` from image features), set :attr:`test_time_flip`
    and :attr:`feature_cache`, and call :meth:`init_calibration` in ``__init__``.
    """

    test_time_flip: bool = False
    """Average the probabilities of each image and its lateral (horizontal) mirror image in evaluation."""

    feature_cache: bool | str = "auto"
    """The frozen-feature cache switch: ``auto`` (on where safe), ``True`` (on, refused where unsafe), ``False``."""

    frozen_features: FrozenFeatures | None = None
    """The frozen-feature tables of the running stage, or ``None`` when the cache is off."""

    reads_feature_maps: bool = True
    """Whether :meth:`classify` reads ``ImageFeatures.maps`` (the cache holds pooled features only)."""

    @abstractmethod
    def classify(self, features: ImageFeatures) -> torch.Tensor:
        """Class logits ``[B, K]`` from a batch's image features."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, K]`` for a batch of images."""
        return self.classify(self.image_features(images))

    def image_features(self, images: torch.Tensor, names: Sequence[str] | None = None,
                       flipped: bool = False) -> ImageFeatures:
        """Image features of a batch (of its mirror images when ``flipped``).

        With the frozen-feature cache on and the images' ``names`` given, the tower's pooled features come from the
        cache (encoded there on first sight) and only the image projection runs; otherwise the encoder runs.
        """
        if self.frozen_features is not None and names is not None:
            def encode(selection: torch.Tensor) -> torch.Tensor:
                chosen = images[selection]
                with torch.no_grad():
                    return self.encoder.tower_features(self.prepare_images(chosen.flip(-1) if flipped else chosen))[0]

            pooled = self.frozen_features.pooled(names, "flip" if flipped else "image", encode, images.device)
            if pooled is not None:
                return self.encoder.project_image(pooled)
        return self.encoder.encode_image(self.prepare_images(images.flip(-1) if flipped else images))

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
    def calibration_bias(self) -> list[float] | None:
        """The stored class biases (``temperature_bias`` scaling; ``None`` otherwise)."""
        bias = (self.calibration or {}).get("bias")
        return None if bias is None else [float(b) for b in bias]

    @property
    def decision_threshold(self) -> float | None:
        """The stored threshold on the class-1 probability (``None``: no record, or more than two classes)."""
        threshold = (self.calibration or {}).get("threshold")
        return None if threshold is None else float(threshold)

    def view_logits(self, images: torch.Tensor, names: Sequence[str] | None = None) -> torch.Tensor:
        """Float logits ``[V, B, K]``: of the images, and of their mirror images with ``test_time_flip``.

        ``names`` (the images' names) let the frozen-feature cache serve the batch (see :meth:`image_features`).
        """
        logits = [self.classify(self.image_features(images, names))]
        if self.test_time_flip:
            logits.append(self.classify(self.image_features(images, names, flipped=True)))
        return torch.stack(logits).float()

    def predict_probabilities(self, images: torch.Tensor, calibrated: bool = False) -> torch.Tensor:
        """Class probabilities ``[B, K]`` (flip-averaged with ``test_time_flip``), calibrated when asked."""
        if not calibrated:
            return calibrated_probabilities(self.view_logits(images))
        return calibrated_probabilities(self.view_logits(images), self.temperature, self.calibration_bias)

    def decide(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Predicted classes ``[B]``: class 1 when ``p_1 >= decision_threshold`` (two classes), else the argmax."""
        threshold = self.decision_threshold
        if threshold is None or probabilities.shape[1] != 2:
            return probabilities.argmax(dim=-1)
        return (probabilities[:, 1] >= threshold).long()

    def probability_step(self, batch: dict[str, Any], stage: str, logits: torch.Tensor | None = None) -> StepOutput:
        """An evaluation step: the NLL of the plain probabilities and the metric inputs.

        The metrics get the class-1 probability with two classes, else all of them; in ``test`` the calibration
        metrics also get the calibrated probabilities. ``logits`` are the batch's view logits when the caller has
        them already (:meth:`view_logits` runs otherwise).
        """
        labels = batch["label"]
        logits = self.view_logits(batch["image"], batch.get("name")) if logits is None else logits
        probabilities = calibrated_probabilities(logits)
        loss = self.loss(probabilities.clamp_min(1e-8).log(), labels)
        if stage == "test":
            self.test_calibration.update(calibrated_probabilities(logits, self.temperature, self.calibration_bias),
                                         probabilities, labels)
        return StepOutput(loss, probabilities[:, 1] if self.num_classes == 2 else probabilities, labels)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Image names, calibrated class probabilities, the decided class and the threshold used (or ``None``)."""
        probabilities = self.predict_probabilities(batch["image"], calibrated=True)
        threshold = self.decision_threshold if probabilities.shape[1] == 2 else None
        return {"name": batch["name"], "probabilities": probabilities.cpu(),
                "prediction": self.decide(probabilities).cpu(), "threshold": threshold}

    def start_feature_cache(self, stage: str) -> None:
        """Open the frozen-feature tables of ``stage`` (``fit``, ``validate``, ``test``) where the switch allows.

        Runs once the weights are final for the stage (after ``init_from`` and a ``ckpt_path`` were loaded).

        Raises:
            usvl.tasks.feature_cache.FeatureCacheRefusedError: ``feature_cache=True`` where it is not safe.
        """
        self.frozen_features = None
        if self._trainer is not None and self._trainer.datamodule is not None:
            self.frozen_features = open_frozen_features(self, self._trainer, stage)

    def stop_feature_cache(self) -> None:
        """Forget the stage's frozen-feature tables (the files stay)."""
        self.frozen_features = None

    def on_fit_start(self) -> None:
        """Also open the frozen-feature tables of the training and validation splits."""
        super().on_fit_start()
        self.start_feature_cache("fit")

    def on_fit_end(self) -> None:
        """Close the frozen-feature tables (after the callbacks' ``on_fit_end``, e.g. the calibration)."""
        self.stop_feature_cache()

    def on_validation_start(self) -> None:
        """Open the validation split's frozen-feature tables for ``validate`` (during fit they are open)."""
        if self.trainer.state.fn == TrainerFn.VALIDATING:
            self.start_feature_cache("validate")

    def on_validation_end(self) -> None:
        """Close the tables ``validate`` opened."""
        if self.trainer.state.fn == TrainerFn.VALIDATING:
            self.stop_feature_cache()

    def on_test_start(self) -> None:
        """Open the test split's frozen-feature tables."""
        self.start_feature_cache("test")

    def on_test_end(self) -> None:
        """Close the test split's frozen-feature tables."""
        self.stop_feature_cache()

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
