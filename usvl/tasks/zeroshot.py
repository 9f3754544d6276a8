"""ZeroShotClassificationTask: classify images by their similarity to the class descriptions, with nothing trained.

``usvl test --config configs/zeroshot/thyroid.yaml`` scores every test image by the cosine similarity of its
embedding with each class prototype (the mean of the class's projected descriptions, whatever prompt ensembles the
descriptions YAML holds; see :class:`~usvl.text.TextEmbeddingCache`) and reports the usual classification metrics.
Without ``init_from`` the projections are the encoder's random initialisation (for the embedded LiT pair: chance,
since nothing has aligned the towers); with ``--model.init_args.init_from <stage-1 checkpoint>`` the adapters,
projections and temperature of stage 1 are loaded first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection

from usvl.data.intensity import IntensityStandardisation
from usvl.metrics import classification_metrics
from usvl.models.adapters.base import Adapter
from usvl.models.encoders.base import ImageFeatures, VisionLanguageEncoder
from usvl.tasks.base import StepOutput
from usvl.tasks.calibrated import CalibratedClassifier
from usvl.tasks.feature_cache import check_switch


class ZeroShotClassificationTask(CalibratedClassifier):
    """Zero-shot classification: ``logit_k = scale * cos(image embedding, prototype of class k)``; no training.

    Probabilities are the softmax of the logits; the loss reported is their negative log-likelihood. The scale only
    calibrates the probabilities (AUROC and accuracy do not depend on it); a stage-1 checkpoint's learnt scale
    replaces it.

    Args:
        encoder: The vision-language encoder.
        num_classes: Number of classes (linked from the data module).
        class_names: Class names in label order (linked from the data module).
        adapter: The adapter of the stage-1 checkpoint (the same spec, so ``init_from`` fits); ``None``: none.
        channels_last: Run convolutions in channels-last memory format.
        temperature: Temperature of the logits when no stage-1 temperature is loaded (the NextGen-UIA zero-shot
            scripts use 0.01, a scale of 100).
        test_time_flip: Average the probabilities of each image and its lateral mirror image.
        init_from: A stage-1 checkpoint (see :class:`~usvl.tasks.base.AdaptedEncoderTask`).
        intensity_standardisation: Per-image grey-level standardisation before the encoder (``none``,
            ``percentile``, ``equalise``; see :class:`~usvl.tasks.base.AdaptedEncoderTask`).
        feature_cache: Keep the image tower's pooled features of the test images, so a later zero-shot test of the
            same model and images (other class descriptions, text ablations) reads them instead of encoding
            (see :mod:`usvl.tasks.feature_cache`). ``auto`` and ``true``: on (zero-shot trains nothing, so it is
            safe); ``false``: off.

    Raises:
        ValueError: ``temperature`` is not positive.
    """

    def __init__(
        self,
        encoder: VisionLanguageEncoder,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        adapter: Adapter | None = None,
        channels_last: bool = True,
        temperature: float = 0.01,
        test_time_flip: bool = False,
        init_from: str | None = None,
        intensity_standardisation: IntensityStandardisation = "none",
        feature_cache: bool | Literal["auto"] = "auto",
    ) -> None:
        super().__init__(encoder, adapter, channels_last=channels_last, init_from=init_from,
                         intensity_standardisation=intensity_standardisation)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.save_hyperparameters(ignore=["encoder", "adapter", "test_time_flip", "feature_cache"])
        self.set_classes(num_classes, class_names)
        self.register_buffer("logit_scale", torch.tensor(math.log(1.0 / temperature)))
        self.test_time_flip = test_time_flip
        self.feature_cache = check_switch(feature_cache)
        self.reads_feature_maps = False
        self.init_calibration()
        self.configure_task(None)

    def configure_losses(self) -> nn.Module:
        """Negative log-likelihood of the probabilities (the task gives it their log)."""
        return nn.NLLLoss()

    def configure_metrics(self) -> MetricCollection:
        """Accuracy, AUROC, F1, sensitivity and specificity (binary on the class-1 probability with two classes)."""
        return classification_metrics(self.num_classes)

    def classify(self, features: ImageFeatures) -> torch.Tensor:
        """Class logits ``[B, K]``: scaled cosine similarity of the image embeddings with the class prototypes."""
        image = F.normalize(features.global_embedding.float(), dim=-1)
        prototypes = F.normalize(self.class_text().float(), dim=-1)
        return self.logit_scale.exp() * image @ prototypes.t()

    def compute_step(self, batch: dict[str, Any], stage: str) -> StepOutput:
        """Probabilities, their negative log-likelihood, and the metric inputs."""
        return self.probability_step(batch, stage)

    def on_fit_start(self) -> None:
        """Refuse to train: zero-shot classification has nothing to fit.

        Raises:
            RuntimeError: Always; the message says what to run instead.
        """
        raise RuntimeError("ZeroShotClassificationTask trains nothing: run `usvl test --config "
                           "configs/zeroshot/<organ>.yaml` (stage 1: usvl fit --config configs/pretrain_<organ>.yaml)")
