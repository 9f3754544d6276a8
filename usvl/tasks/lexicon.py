"""LexiconTask: the classifier plus descriptor heads that predict a reporting lexicon (ACR TI-RADS, BI-RADS).

A subclass of :class:`~usvl.tasks.classification.ClassificationTask` rather than a switch inside it: the classifier,
its checkpoints, calibration, export and feature cache stay exactly as they are, and the descriptor heads, their
targets, losses, metrics and read-out live in one place. The heads read the same pooled image embedding as the class
head (one encoder pass serves both), so they add a few small matrix products to a step.

Loss: ``classifier loss + lexicon_weight * sum_d w_d * loss_d`` with ``w`` the ``descriptor_weights`` normalised to
sum 1; ``loss_d`` is the cross entropy (single-label descriptors) or the mean binary cross entropy over values
(multi-label) over the images of the batch that have descriptor ``d``; images without it are masked out of that
term, not dropped. Stages log ``<stage>/loss`` (the total), ``<stage>/loss_classifier`` and ``<stage>/loss_lexicon``;
validation and test add the metrics of :class:`~usvl.metrics.lexicon.LexiconMetrics` (per-descriptor accuracy and
kappa, category kappa, AUROC of the expected points next to the classifier's).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from usvl.data.intensity import IntensityStandardisation
from usvl.lexicon import Lexicon, get_lexicon
from usvl.metrics.calibration import calibrated_probabilities
from usvl.metrics.lexicon import LexiconMetrics
from usvl.models.adapters.base import Adapter
from usvl.models.encoders.base import ImageFeatures, VisionLanguageEncoder
from usvl.models.heads.factory import HeadFactory
from usvl.models.heads.lexicon import DescriptorHeads
from usvl.tasks.base import StepOutput
from usvl.tasks.classification import ClassificationTask

log = logging.getLogger(__name__)

LEXICON_STAGES = ("val", "test")
"""Stages whose lexicon metrics are computed."""


class MissingDescriptorsError(ValueError):
    """A batch reached the descriptor heads without descriptor targets."""


class LexiconReadout:
    """The lexicon side of a classifier: descriptor probabilities, their metrics and the read-out in ``predict``.

    Mixed into a :class:`~usvl.tasks.calibrated.CalibratedClassifier` subclass (before it in the bases), which
    implements :meth:`describe`: descriptor logits ``[B, values]`` per descriptor from a batch's image features, the
    softmax inputs of a single-label descriptor and one sigmoid input per value of a multi-label one.
    :class:`LexiconTask` describes with trained heads, :class:`~usvl.tasks.zeroshot_lexicon.ZeroShotLexiconTask`
    with prompts per descriptor value. Call :meth:`init_lexicon` in ``__init__``.
    """

    lexicon: Lexicon
    positive_class: int | None

    def init_lexicon(self, lexicon: str) -> None:
        """Set the lexicon (``tirads``, ``birads``), the positive class its points score, and the metrics.

        Raises:
            KeyError: Unknown lexicon.
        """
        self.lexicon = get_lexicon(lexicon)
        names = list(self.class_names)
        self.positive_class = (names.index(self.lexicon.positive_class) if self.lexicon.positive_class in names
                               else 1 if self.num_classes == 2 else None)
        for stage in LEXICON_STAGES:
            setattr(self, f"{stage}_lexicon_metrics", LexiconMetrics(self.lexicon, self.positive_class))

    def describe(self, features: ImageFeatures) -> dict[str, torch.Tensor]:
        """Descriptor logits ``[B, values]`` per descriptor from a batch's image features."""
        raise NotImplementedError

    def view_outputs(self, images: torch.Tensor, names: Sequence[str] | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Float class logits ``[V, B, K]`` and descriptor logits ``[V, B, values]``, from one encoder pass per view.

        The views are the images and, with ``test_time_flip``, their mirror images.
        """
        class_logits, descriptor_logits = [], []
        for flipped in (False, True) if self.test_time_flip else (False,):
            features = self.image_features(images, names, flipped=flipped)
            class_logits.append(self.classify(features))
            descriptor_logits.append(self.describe(features))
        stacked = {name: torch.stack([view[name] for view in descriptor_logits]).float()
                   for name in descriptor_logits[0]}
        return torch.stack(class_logits).float(), stacked

    def view_logits(self, images: torch.Tensor, names: Sequence[str] | None = None) -> torch.Tensor:
        """Float class logits ``[V, B, K]`` (see :meth:`view_outputs`)."""
        return self.view_outputs(images, names)[0]

    def descriptor_probabilities(self, logits: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per descriptor, probabilities ``[B, values]`` averaged over the views of ``[V, B, values]`` logits.

        Softmax for single-label descriptors, one sigmoid per value for multi-label ones.
        """
        return {name: (value.softmax(dim=-1) if name in self.lexicon.single else value.sigmoid()).mean(dim=0)
                for name, value in logits.items()}

    def descriptor_targets(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The batch's descriptor targets (:meth:`usvl.lexicon.Lexicon.encode_targets`; missing ones masked).

        Raises:
            MissingDescriptorsError: The batch has no ``descriptors`` (the data module provides none).
        """
        if "descriptors" not in batch:
            raise MissingDescriptorsError(
                f"{type(self).__name__} needs descriptor targets in its batches: use a data module from "
                "usvl.data.descriptors (SyntheticDescriptorDataModule for the synthetic twins, "
                "DDTIDescriptorDataModule for DDTI's original release, FolderDescriptorDataModule with a "
                "descriptor_file for a folder)")
        return self.lexicon.encode_targets(batch["descriptors"], len(batch["label"]), batch["label"].device)

    def descriptor_losses(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                          probabilities: bool) -> dict[str, torch.Tensor]:
        """Masked loss per descriptor: over the images that have the descriptor; 0 (in the graph) when none has it.

        Args:
            outputs: Logits ``[B, values]`` (``probabilities=False``, training) or view-averaged probabilities.
            targets: Encoded targets (-1 where missing).
            probabilities: Whether ``outputs`` are probabilities (then the losses are the NLL of those).
        """
        losses = {}
        for name, output in outputs.items():
            target = targets[name]
            valid = target >= 0 if target.ndim == 1 else (target >= 0).all(dim=1)
            if not bool(valid.any()):
                losses[name] = output.sum() * 0.0
            elif name in self.lexicon.single:
                chosen = output[valid]
                losses[name] = (F.nll_loss(chosen.clamp_min(1e-8).log(), target[valid]) if probabilities
                                else F.cross_entropy(chosen, target[valid]))
            else:
                chosen = output[valid]
                losses[name] = (F.binary_cross_entropy(chosen.clamp(1e-6, 1 - 1e-6), target[valid]) if probabilities
                                else F.binary_cross_entropy_with_logits(chosen, target[valid]))
        return losses

    def lexicon_loss(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The descriptor losses combined into one (their mean; :class:`LexiconTask` weighs them)."""
        return sum(losses.values()) / max(len(losses), 1)

    def evaluation_step(self, batch: dict[str, Any], stage: str) -> tuple[StepOutput, torch.Tensor]:
        """Validation or test: the classifier's step output and the lexicon loss; updates the lexicon metrics."""
        labels = batch["label"]
        targets = self.descriptor_targets(batch)
        class_logits, descriptor_logits = self.view_outputs(batch["image"], batch.get("name"))
        output = self.probability_step(batch, stage, class_logits)
        descriptor_probabilities = self.descriptor_probabilities(descriptor_logits)
        losses = self.descriptor_losses(descriptor_probabilities, targets, probabilities=True)
        metrics = getattr(self, f"{stage}_lexicon_metrics", None)
        if metrics is not None:
            class_probabilities = calibrated_probabilities(class_logits)
            positive = None if self.positive_class is None else class_probabilities[:, self.positive_class]
            metrics.update(descriptor_probabilities, targets, positive, labels)
        return output, self.lexicon_loss(losses)

    def log_losses(self, stage: str, output: StepOutput, lexicon_loss: torch.Tensor, batch_size: int) -> None:
        """Log ``<stage>/loss_classifier`` and ``<stage>/loss_lexicon``."""
        self.log(f"{stage}/loss_classifier", output.loss, on_step=False, on_epoch=True, batch_size=batch_size,
                 sync_dist=True)
        self.log(f"{stage}/loss_lexicon", lexicon_loss, on_step=False, on_epoch=True, batch_size=batch_size,
                 sync_dist=True)

    def _log_lexicon_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_lexicon_metrics", None)
        if metrics is None or not metrics.update_called:
            return
        self.log_dict({f"{stage}/{name}": value for name, value in metrics.compute().items()})
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        """Log the validation metrics, then the lexicon metrics."""
        super().on_validation_epoch_end()
        self._log_lexicon_metrics("val")

    def on_test_epoch_end(self) -> None:
        """Log the test and calibration metrics, then the lexicon metrics."""
        super().on_test_epoch_end()
        self._log_lexicon_metrics("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """The classifier's prediction (calibrated), the descriptor probabilities and the read-out of each image.

        Returns:
            ``name``, ``probabilities``, ``prediction``, ``threshold`` (as the classifier's), ``descriptors``
            (probabilities ``[B, values]`` per descriptor) and ``readout`` (one
            :meth:`usvl.lexicon.Lexicon.readout` dict per image; an image the classifier calls the lexicon's
            no-finding class, e.g. breast ``normal``, reports no lesion).
        """
        class_logits, descriptor_logits = self.view_outputs(batch["image"])
        probabilities = calibrated_probabilities(class_logits, self.temperature, self.calibration_bias)
        decided = self.decide(probabilities)
        descriptor_probabilities = {k: v.float().cpu() for k, v in
                                    self.descriptor_probabilities(descriptor_logits).items()}
        expected = self.lexicon.expected_points(descriptor_probabilities)
        readouts = []
        for i, predicted in enumerate(decided.tolist()):
            finding = self.class_names[predicted] != self.lexicon.no_finding_class
            readouts.append(self.lexicon.readout({k: v[i].tolist() for k, v in descriptor_probabilities.items()},
                                                 float(expected[i]), finding))
        threshold = self.decision_threshold if probabilities.shape[1] == 2 else None
        return {"name": batch["name"], "probabilities": probabilities.cpu(), "prediction": decided.cpu(),
                "threshold": threshold, "descriptors": descriptor_probabilities, "readout": readouts}

    def setup(self, stage: str) -> None:
        """Check the data module's descriptor values against the lexicon before the first step (when it has some)."""
        super().setup(stage)
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        found = getattr(datamodule, "descriptors_by_name", None)
        if found:
            check_descriptors(self.lexicon, found)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also record the lexicon's name (``checkpoint["usvl"]["lexicon"]``)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["usvl"]["lexicon"] = self.lexicon.name


class LexiconTask(LexiconReadout, ClassificationTask):
    """Classification with lexicon descriptor heads beside the class head, and a lexicon read-out in ``predict``.

    One softmax head per single-label descriptor and one sigmoid head per multi-label descriptor of ``lexicon``
    (:class:`~usvl.models.heads.lexicon.DescriptorHeads` on the image embedding). Targets come from the batches'
    ``descriptors`` (:mod:`usvl.data.descriptors`). ``predict`` adds, per image, the descriptors with their
    probabilities, the points, the category and the one-sentence report (``readout``), which
    :class:`~usvl.callbacks.ClassificationPredictionWriter` writes to the CSV, the overlay and a JSON per image.

    Args:
        encoder: The vision-language encoder.
        head: The class head factory (as for :class:`~usvl.tasks.classification.ClassificationTask`).
        num_classes: Number of classes (linked from the data module).
        class_names: Class names in label order (linked from the data module).
        lexicon: ``tirads`` (ACR TI-RADS: composition, echogenicity, shape, margin; echogenic foci multi-label) or
            ``birads`` (BI-RADS: shape, orientation, margin, echo pattern, posterior features; calcifications
            multi-label).
        lexicon_weight: Weight of the descriptor loss against the classifier's (0: the heads do not train).
        descriptor_weights: Relative weight per descriptor name (normalised to sum 1; unnamed descriptors 1). None:
            all equal.
        descriptor_dropout: Dropout on the embedding before the descriptor heads.
        adapter: How to adapt the image tower.
        optimizer: Optimizer factory.
        scheduler: Learning-rate scheduler factory.
        channels_last: Run convolutions in channels-last memory format.
        label_smoothing: Label smoothing of the default class loss.
        test_time_flip: Average each image's and its mirror image's probabilities (classes and descriptors) in
            validation, test and predict.
        loss: Class loss (see :class:`~usvl.tasks.classification.ClassificationTask`).
        init_from: A stage-1 checkpoint for the adapters and projections.
        intensity_standardisation: Per-image grey-level standardisation before the encoder.
        feature_cache: The frozen-feature cache switch (the descriptor heads read the pooled embedding only).

    Raises:
        KeyError: Unknown lexicon.
        ValueError: ``descriptor_weights`` names a descriptor the lexicon lacks, or a weight is negative.
    """

    def __init__(
        self,
        encoder: VisionLanguageEncoder,
        head: HeadFactory,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        lexicon: Literal["tirads", "birads"] = "tirads",
        lexicon_weight: float = 1.0,
        descriptor_weights: dict[str, float] | None = None,
        descriptor_dropout: float = 0.0,
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
        super().__init__(encoder, head, num_classes, class_names, adapter, optimizer, scheduler, channels_last,
                         label_smoothing, test_time_flip, loss, init_from, intensity_standardisation, feature_cache)
        self.init_lexicon(lexicon)
        self.lexicon_weight = float(lexicon_weight)
        self.descriptor_weights = normalised_weights(self.lexicon, descriptor_weights)
        self.descriptor_head = DescriptorHeads(encoder.embed_dim, self.lexicon.head_sizes(), descriptor_dropout)

    def describe(self, features: ImageFeatures) -> dict[str, torch.Tensor]:
        """Descriptor logits ``[B, values]`` per descriptor from a batch's image features."""
        return self.descriptor_head(features.global_embedding)

    def gradient_check_output(self, images: torch.Tensor) -> torch.Tensor:
        """Class and descriptor logits, flattened: every head must receive a gradient."""
        features = self.image_features(images)
        outputs = [self.classify(features), *self.describe(features).values()]
        return torch.cat([output.float().flatten() for output in outputs])

    def lexicon_loss(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The descriptor losses weighted by ``descriptor_weights``."""
        return sum(self.descriptor_weights[name] * value for name, value in losses.items())

    def compute_step(self, batch: dict[str, Any], stage: str) -> StepOutput:
        """Class and descriptor losses from one encoder pass; the lexicon metrics in validation and test."""
        if stage == "train":
            labels = batch["label"]
            targets = self.descriptor_targets(batch)
            features = self.image_features(batch["image"], batch.get("name"))
            logits = self.classify(features)
            probabilities = logits.detach().float().softmax(dim=-1)
            output = StepOutput(self.loss(logits.float(), labels),
                                probabilities[:, 1] if self.num_classes == 2 else probabilities, labels)
            descriptor_logits = {name: value.float() for name, value in self.describe(features).items()}
            lexicon_loss = self.lexicon_loss(self.descriptor_losses(descriptor_logits, targets, probabilities=False))
        else:
            output, lexicon_loss = self.evaluation_step(batch, stage)
        self.log_losses(stage, output, lexicon_loss, len(batch["label"]))
        output.loss = output.loss + self.lexicon_weight * lexicon_loss
        return output


def normalised_weights(lexicon: Lexicon, weights: Mapping[str, float] | None) -> dict[str, float]:
    """Per-descriptor loss weights summing to 1 (unnamed descriptors weigh 1 before normalising).

    Raises:
        ValueError: An unknown descriptor, a negative weight, or all weights zero.
    """
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(lexicon.descriptors))
    if unknown:
        raise ValueError(f"descriptor_weights names {unknown}, which {lexicon.title} lacks; its descriptors: "
                         f"{list(lexicon.descriptors)}")
    raw = {name: float(weights.get(name, 1.0)) for name in lexicon.descriptors}
    if any(value < 0 for value in raw.values()) or sum(raw.values()) <= 0:
        raise ValueError(f"descriptor_weights must be non-negative with a positive sum, got {raw}")
    total = sum(raw.values())
    return {name: value / total for name, value in raw.items()}


def check_descriptors(lexicon: Lexicon, descriptors_by_name: Mapping[str, Mapping[str, str]]) -> dict[str, int]:
    """Parse every image's descriptor values in ``lexicon``; log how many images have each descriptor.

    Returns:
        Images with a value, per descriptor.

    Raises:
        ValueError: Values outside the vocabulary; the message names up to five images, their values and the
            vocabulary.
    """
    counts = dict.fromkeys(lexicon.descriptors, 0)
    problems = []
    for image, record in descriptors_by_name.items():
        for name in lexicon.descriptors:
            try:
                counts[name] += lexicon.parse(name, record.get(name, "")) is not None
            except ValueError as error:
                problems.append(f"{image}: {error}")
    if problems:
        raise ValueError(f"{len(problems)} descriptor values are not in the {lexicon.title} vocabulary, e.g. "
                         + "; ".join(problems[:5]))
    log.info("%s descriptor targets: %s of %d images", lexicon.title,
             ", ".join(f"{name} {count}" for name, count in counts.items()), len(descriptors_by_name))
    if not any(counts.values()):
        log.warning("No image has any %s descriptor: the descriptor heads get no training signal", lexicon.title)
    return counts
