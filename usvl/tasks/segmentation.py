"""SegmentationTask: frozen vision-language encoder + adapters + multi-scale decoder, optionally text-conditioned."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection

from usvl.data.intensity import IntensityStandardisation
from usvl.metrics import SegmentationMetrics
from usvl.metrics.lesion_gate import apply_lesion_gate
from usvl.models.adapters.base import Adapter
from usvl.models.encoders.base import VisionLanguageEncoder
from usvl.models.heads.factory import HeadFactory
from usvl.tasks.base import AdaptedEncoderTask, StepOutput
from usvl.tasks.losses import DiceCELoss

NORMAL_CLASS_NAMES = ("normal",)
"""Class names that mean "no lesion"; their prototypes are left out of the default lesion text vector."""


class SegmentationTask(AdaptedEncoderTask):
    """Binary lesion segmentation from the encoder's multi-scale maps, with the class text as conditioning.

    The head gets the tapped maps and, if it uses text (``head.uses_text``), one text vector: the normalised mean of
    the projected class prototypes of ``lesion_classes``. The class descriptions come from the
    ``TextEmbeddingCache`` callback, as in :class:`~usvl.tasks.ClassificationTask`.

    Validation and test accumulate :class:`~usvl.metrics.SegmentationMetrics` (masks thresholded at
    ``threshold``) and log every entry of its ``compute()`` at epoch end as ``val/<key>`` / ``test/<key>``
    (``dice``, ``iou``, ``hd95``, ``asd``, ``fp_rate_normal``, the empty-mask case counts, ...). Entries that are
    undefined for the epoch (e.g. ``fp_rate_normal`` without normal images) are logged as NaN, so the set of keys
    is always the same. Distances are in pixels at the model resolution, or in mm with ``pixel_spacing_mm``, or in
    mm per image where the batch carries a ``spacing`` (calibrated DICOM images, see :mod:`usvl.data.dicom`; images
    without one then take ``pixel_spacing_mm``, and without it the batch is refused: pixel and mm distances would mix).
    A lesion gate chosen on validation (``calibration.lesion_gate``, :mod:`usvl.metrics.lesion_gate`) and stored in
    the checkpoint empties the masks of low-confidence images in ``test`` and ``predict`` (:meth:`predict_masks`);
    the test then also logs ``test/lesion_gate_threshold`` and ``test/lesion_gate_emptied``.

    The image projection of the encoder is frozen (the head reads the maps, not the pooled embedding), and so is
    the text projection when the head ignores text, so that the trainable-parameter count and the checkpoint hold
    only what is trained.

    Args:
        encoder: The vision-language encoder (its ``feature_dims`` size the head).
        head: Head factory called as ``head(feature_dims, embed_dim, 1)``, e.g. ``MultiScaleSegmentationHead``.
        num_classes: Number of image classes (linked from the data module; used for the text only).
        class_names: Class names in label order (linked from the data module); the text descriptions are looked up
            by these names.
        adapter: How to adapt the image tower.
        optimizer: Optimizer factory.
        scheduler: Learning-rate scheduler factory.
        channels_last: Run convolutions in channels-last memory format.
        loss: Segmentation loss on one-channel logits and 0/1 masks; defaults to ``DiceCELoss()``.
        threshold: Probability above which a pixel is predicted as lesion (evaluation and prediction).
        pixel_spacing_mm: Size of one pixel at the model resolution (after resizing to ``image_size``), in mm;
            HD95 and ASD are then reported in mm. ``None`` reports them in pixels.
        lesion_classes: Classes whose prototypes are averaged into the text vector; ``None`` takes every class
            except ``normal`` (or all classes if that leaves none).
        init_from: A stage-1 checkpoint for the adapters and projections (see
            :class:`~usvl.tasks.base.AdaptedEncoderTask`).
        intensity_standardisation: Per-image grey-level standardisation before the encoder (``none``,
            ``percentile``, ``equalise``; see :class:`~usvl.tasks.base.AdaptedEncoderTask`).
    """

    metric_stages = ("val", "test")
    progress_bar_metrics = ("dice",)

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
        loss: nn.Module | None = None,
        threshold: float = 0.5,
        pixel_spacing_mm: float | None = None,
        lesion_classes: Sequence[str] | None = None,
        init_from: str | None = None,
        intensity_standardisation: IntensityStandardisation = "none",
    ) -> None:
        super().__init__(encoder, adapter, optimizer, scheduler, channels_last, init_from, intensity_standardisation)
        # Evaluation-only settings stay out of the checkpoint, so `usvl test --ckpt_path` can change them.
        self.save_hyperparameters(ignore=["encoder", "head", "adapter", "optimizer", "scheduler", "loss", "threshold",
                                          "pixel_spacing_mm"])
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        if pixel_spacing_mm is not None and not (math.isfinite(pixel_spacing_mm) and pixel_spacing_mm > 0):
            raise ValueError(f"pixel_spacing_mm must be positive, got {pixel_spacing_mm}")
        self.set_classes(num_classes, class_names)
        if lesion_classes is None:
            lesion_classes = [n for n in self.class_names if n.lower() not in NORMAL_CLASS_NAMES] or self.class_names
        unknown = [n for n in lesion_classes if n not in self.class_names]
        if unknown or not lesion_classes:
            raise ValueError(f"lesion_classes {list(lesion_classes)} must be a non-empty subset of {self.class_names}")
        self.lesion_classes = list(lesion_classes)
        self.head = head(list(encoder.feature_dims), encoder.embed_dim, 1)
        self.uses_text = bool(getattr(self.head, "uses_text", False))
        self._freeze_unused_projections()
        self.threshold = threshold
        self.pixel_spacing_mm = pixel_spacing_mm
        self.lesion_gate: dict[str, Any] | None = None
        self.gated_images = 0
        self.configure_task(loss)

    def configure_losses(self) -> nn.Module:
        """Soft Dice + binary cross entropy (:class:`~usvl.tasks.losses.DiceCELoss`)."""
        return DiceCELoss()

    def configure_metrics(self) -> MetricCollection:
        """Per-image Dice, IoU, HD95, ASD and the empty-mask counts (:class:`~usvl.metrics.SegmentationMetrics`)."""
        return MetricCollection({"segmentation": SegmentationMetrics()})

    def _freeze_unused_projections(self) -> None:
        unused = {"image_projection"} if self.uses_text else {"image_projection", "text_projection"}
        for name, parameter in self.encoder.named_parameters():
            if name.split(".")[0] in unused:
                parameter.requires_grad_(False)

    def lesion_text(self) -> torch.Tensor:
        """The text vector ``[embed_dim]``: normalised mean of the projected prototypes of ``lesion_classes``.

        Raises:
            RuntimeError: No text embeddings were set (add the ``TextEmbeddingCache`` callback).
        """
        prototypes = self.class_text()
        index = [self.class_names.index(name) for name in self.lesion_classes]
        return F.normalize(prototypes[index].mean(dim=0), dim=-1)

    def forward(self, images: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        """Lesion logits ``[B, 1, H, W]`` at ``output_size`` (default: the image size)."""
        features = self.encoder.encode_image(self.prepare_images(images))
        text = self.lesion_text() if self.uses_text else None
        return self.head(features, text, tuple(output_size or images.shape[-2:]))

    def gate_active(self) -> bool:
        """Whether the stored lesion gate applies now: in ``test`` and ``predict`` or outside a trainer, not in fit."""
        if self.lesion_gate is None:
            return False
        trainer = self._trainer
        return trainer is None or bool(trainer.testing or trainer.predicting)

    def predict_masks(self, logits: torch.Tensor) -> torch.Tensor:
        """Boolean masks from logits: lesion probability above ``threshold``; in test and predict, gated.

        With a stored lesion gate (:mod:`usvl.metrics.lesion_gate`, fitted on validation by the ``calibration``
        section's ``lesion_gate`` switch) an image whose mean probability over its predicted pixels is below the
        gate's threshold is predicted empty; :attr:`gated_images` counts them.
        """
        probability = logits.detach().float().sigmoid()
        masks = probability > self.threshold
        if self.gate_active():
            masks, gated = apply_lesion_gate(masks, probability, self.threshold, self.lesion_gate["threshold"])
            self.gated_images += int(gated.sum())
        return masks

    def _spacing(self, batch: dict[str, Any] | None = None) -> torch.Tensor | tuple[float, float] | None:
        """Pixel size ``(row, col)`` in mm: per image from the batch's ``spacing`` (DICOM), else ``pixel_spacing_mm``.

        Raises:
            ValueError: Some images of the batch have a spacing and others none, and ``pixel_spacing_mm`` is unset.
        """
        default = None if self.pixel_spacing_mm is None else (self.pixel_spacing_mm, self.pixel_spacing_mm)
        given = batch.get("spacing") if batch is not None else None
        if given is None:
            return default
        spacing = given.detach().double().cpu().reshape(-1, 2).clone()
        known = torch.isfinite(spacing).all(dim=1)
        if known.all():
            return spacing
        if not known.any():
            return default
        if default is None:
            names = [name for name, ok in zip(batch.get("name", []), known.tolist(), strict=False) if not ok]
            raise ValueError(f"The batch mixes images with a pixel spacing (calibrated DICOM) and without one "
                             f"({names[:5]}): their HD95 and ASD would mix mm and pixels. Set "
                             "--model.init_args.pixel_spacing_mm for the others, or evaluate them separately")
        spacing[~known] = torch.tensor(default, dtype=spacing.dtype)
        return spacing

    def compute_step(self, batch: dict[str, Any], stage: str) -> StepOutput:
        """Loss on the mask logits; the metrics get the thresholded masks and the pixel spacing.

        Raises:
            KeyError: The batch has no masks (the data module was not set up for segmentation).
        """
        if "mask" not in batch:
            raise KeyError("The batch has no 'mask': set data.init_args.task to segmentation")
        masks = batch["mask"]
        logits = self(batch["image"], output_size=masks.shape[-2:])
        return StepOutput(self.loss(logits, masks), self.predict_masks(logits), masks,
                          {"spacing": self._spacing(batch) if stage in self.metric_stages else None})

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Image names, predicted masks (``uint8`` 0/1) and lesion probabilities, ``[B, 1, H, W]`` at the image size."""
        logits = self(batch["image"])
        return {"name": batch["name"], "mask": self.predict_masks(logits).to(torch.uint8).cpu(),
                "probability": logits.detach().float().sigmoid().cpu()}

    def on_test_epoch_start(self) -> None:
        """Start counting the images the lesion gate empties."""
        self.gated_images = 0

    def on_test_epoch_end(self) -> None:
        """Log the test metrics and, with a lesion gate, its threshold and how many images it emptied."""
        super().on_test_epoch_end()
        if self.lesion_gate is not None:
            self.log_dict({"test/lesion_gate_threshold": float(self.lesion_gate["threshold"]),
                           "test/lesion_gate_emptied": float(self.gated_images)})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also record the lesion classes the text vector was built from, and the lesion gate when there is one."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["usvl"]["lesion_classes"] = self.lesion_classes
        if self.lesion_gate is not None:
            checkpoint["usvl"]["lesion_gate"] = dict(self.lesion_gate)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also take the checkpoint's lesion gate (none in checkpoints fitted without one)."""
        super().on_load_checkpoint(checkpoint)
        record = checkpoint.get("usvl", {}).get("lesion_gate")
        self.lesion_gate = dict(record) if record else None
