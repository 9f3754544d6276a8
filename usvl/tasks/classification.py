"""ClassificationTask: frozen vision-language encoder + adapters + prompt-similarity head."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from usvl.metrics import classification_metrics
from usvl.models.adapters.base import Adapter
from usvl.models.encoders.base import VisionLanguageEncoder
from usvl.tasks.base import AdaptedEncoderTask

HeadFactory = Callable[[int, int], nn.Module]


class ClassificationTask(AdaptedEncoderTask):
    """Image classification with class text embeddings in the head.

    Args:
        encoder: The vision-language encoder.
        head: Head factory called as ``head(embed_dim, num_classes)``, e.g. ``PromptSimilarityHead``.
        num_classes: Number of classes (linked from the data module).
        class_names: Class names in label order (linked from the data module).
        adapter: How to adapt the image tower.
        optimizer: Optimizer factory.
        scheduler: Learning-rate scheduler factory.
        channels_last: Run convolutions in channels-last memory format.
        label_smoothing: Cross-entropy label smoothing.
        test_time_flip: In validation, test and predict, average the probabilities of each image and its
            lateral (horizontal) mirror image.
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
    ) -> None:
        super().__init__(encoder, adapter, optimizer, scheduler, channels_last)
        # Evaluation-only switches stay out of the checkpoint, so `usvl test --ckpt_path` can change them.
        self.save_hyperparameters(ignore=["encoder", "head", "adapter", "optimizer", "scheduler", "test_time_flip"])
        self.set_classes(num_classes, class_names)
        self.head = head(encoder.embed_dim, num_classes)
        self.label_smoothing = label_smoothing
        self.test_time_flip = test_time_flip
        metrics = classification_metrics(num_classes)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, K]`` for a batch of images."""
        features = self.encoder.encode_image(self.prepare_images(images))
        return self.head(features, self.class_text())

    def predict_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[B, K]``, averaged with the mirrored image when ``test_time_flip`` is on."""
        probabilities = self(images).float().softmax(dim=-1)
        if self.test_time_flip:
            probabilities = (probabilities + self(images.flip(-1)).float().softmax(dim=-1)) / 2
        return probabilities

    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        labels = batch["label"]
        if stage == "train":
            logits = self(batch["image"])
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
            probabilities = logits.detach().float().softmax(dim=-1)
        else:
            probabilities = self.predict_probabilities(batch["image"])
            loss = F.nll_loss(probabilities.clamp_min(1e-8).log(), labels)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(probabilities[:, 1] if self.num_classes == 2 else probabilities, labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=len(labels))
        return loss

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Class probabilities and predicted class per image, with the image names."""
        probabilities = self.predict_probabilities(batch["image"])
        return {"name": batch["name"], "probabilities": probabilities.cpu(),
                "prediction": probabilities.argmax(dim=-1).cpu()}

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        self.log_dict(metrics.compute(), prog_bar=stage == "val")
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        """Log training metrics."""
        self._log_epoch_metrics("train")
