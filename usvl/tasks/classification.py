"""ClassificationTask: frozen vision-language encoder + adapters + prompt-similarity head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection

from usvl.data.intensity import IntensityStandardisation
from usvl.metrics import classification_metrics
from usvl.models.adapters.base import Adapter
from usvl.models.encoders.base import ImageFeatures, VisionLanguageEncoder
from usvl.models.heads.factory import HeadFactory
from usvl.tasks.base import StepOutput
from usvl.tasks.calibrated import CalibratedClassifier
from usvl.tasks.feature_cache import check_switch


class ClassificationTask(CalibratedClassifier):
    """Image classification with class text embeddings in the head.

    Evaluation, the calibration stored after fit and prediction are those of
    :class:`~usvl.tasks.calibrated.CalibratedClassifier`.

    Args:
        encoder: The vision-language encoder.
        head: Head factory called as ``head(feature_dims, embed_dim, num_classes)``, e.g. ``PromptSimilarityHead``;
            a head with ``uses_text = False`` gets ``None`` instead of the class prototypes; one with
            ``uses_maps = False`` reads the pooled embedding only, which the frozen-feature cache needs.
        num_classes: Number of classes (linked from the data module).
        class_names: Class names in label order (linked from the data module).
        adapter: How to adapt the image tower.
        optimizer: Optimizer factory.
        scheduler: Learning-rate scheduler factory.
        channels_last: Run convolutions in channels-last memory format.
        label_smoothing: Label smoothing of the default cross-entropy loss.
        test_time_flip: In validation, test and predict, average the probabilities of each image and its
            lateral (horizontal) mirror image.
        loss: Loss on class logits ``[B, K]`` and labels ``[B]``; defaults to cross entropy with
            ``label_smoothing``. In validation and test it gets the log of the (flip-averaged) probabilities,
            which for cross entropy without smoothing is the negative log-likelihood of those probabilities.
        init_from: A stage-1 checkpoint for the adapters and projections (see
            :class:`~usvl.tasks.base.AdaptedEncoderTask`).
        intensity_standardisation: Per-image grey-level standardisation before the encoder (``none``,
            ``percentile``, ``equalise``; see :class:`~usvl.tasks.base.AdaptedEncoderTask`).
        feature_cache: Keep the frozen image tower's pooled features so it runs once per image (a linear probe:
            ``adapter: null`` and ``data.augment: null``; see :mod:`usvl.tasks.feature_cache`). ``auto``: on where
            safe, otherwise off with the reason in the log; ``true``: on, and refused with the reason where unsafe;
            ``false``: off. It changes speed only, not the results.
    """

    def __init__(
        self,
        encoder: VisionLanguageEncoder,
        head: HeadFactory,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        adapter: Adapter | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        channels_last: bool = True,
        label_smoothing: float = 0.0,
        test_time_flip: bool = False,
        loss: nn.Module | None = None,
        init_from: str | None = None,
        intensity_standardisation: IntensityStandardisation = "none",
        feature_cache: bool | Literal["auto"] = "auto",
    ) -> None:
        super().__init__(encoder, adapter, optimizer, scheduler, channels_last, init_from, intensity_standardisation)
        # Evaluation-only and speed-only switches stay out of the checkpoint (`usvl test --ckpt_path` may change them).
        self.save_hyperparameters(ignore=["encoder", "head", "adapter", "optimizer", "scheduler", "test_time_flip",
                                          "loss", "feature_cache"])
        self.set_classes(num_classes, class_names)
        self.head = head(list(encoder.feature_dims), encoder.embed_dim, num_classes)
        self.uses_text = bool(getattr(self.head, "uses_text", True))
        if not self.uses_text:  # nothing reads the projected class text: its projection cannot learn
            for name, parameter in self.encoder.named_parameters():
                if name.split(".")[0] == "text_projection":
                    parameter.requires_grad_(False)
        self.label_smoothing = label_smoothing
        self.test_time_flip = test_time_flip
        self.feature_cache = check_switch(feature_cache)
        self.reads_feature_maps = bool(getattr(self.head, "uses_maps", True))
        self.init_calibration()
        self.configure_task(loss)

    def configure_losses(self) -> nn.Module:
        """Cross entropy with ``label_smoothing``."""
        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    def configure_metrics(self) -> MetricCollection:
        """Accuracy, AUROC, F1, sensitivity and specificity (binary on the class-1 probability with two classes)."""
        return classification_metrics(self.num_classes)

    def classify(self, features: ImageFeatures) -> torch.Tensor:
        """Class logits ``[B, K]``: the head on the image features (and the class prototypes, when it reads text)."""
        return self.head(features, self.class_text() if self.uses_text else None)

    def compute_step(self, batch: dict[str, Any], stage: str) -> StepOutput:
        """Loss on the logits in training, on the log of the (flip-averaged) probabilities otherwise."""
        labels = batch["label"]
        if stage == "train":
            logits = self.classify(self.image_features(batch["image"], batch.get("name")))
            loss = self.loss(logits.float(), labels)
            probabilities = logits.detach().float().softmax(dim=-1)
        else:
            return self.probability_step(batch, stage)
        return StepOutput(loss, probabilities[:, 1] if self.num_classes == 2 else probabilities, labels)
