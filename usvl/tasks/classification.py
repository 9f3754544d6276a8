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
from usvl.models.heads.classification import class_prototypes
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
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.head = head(encoder.embed_dim, num_classes)
        self.label_smoothing = label_smoothing
        self.test_time_flip = test_time_flip
        self.text_embeddings: torch.Tensor | None = None
        metrics = classification_metrics(num_classes)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def set_text_embeddings(self, embeddings: torch.Tensor) -> None:
        """Frozen text-tower embeddings of the class descriptions, ``[num_classes, phrasings, text_dim]``.

        Raises:
            ValueError: The first dimension does not match the number of classes.
        """
        if embeddings.ndim != 3 or embeddings.shape[0] != self.num_classes:
            raise ValueError(f"Expected [{self.num_classes}, P, D] text embeddings, got {tuple(embeddings.shape)}")
        self.text_embeddings = embeddings.to(self.device)

    def class_text(self) -> torch.Tensor:
        """Projected class prototypes ``[K, embed_dim]``.

        Raises:
            RuntimeError: No text embeddings were set (add the ``TextEmbeddingCache`` callback).
        """
        if self.text_embeddings is None:
            raise RuntimeError("No class text embeddings: add usvl.text.TextEmbeddingCache to trainer.callbacks")
        raw = self.text_embeddings.to(self.device)
        projected = self.encoder.project_text(raw.flatten(0, 1)).view(*raw.shape[:2], -1)
        return class_prototypes(projected)

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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Cross-entropy on a training batch."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Update validation metrics."""
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Update test metrics."""
        self._shared_step(batch, "test")

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

    def on_validation_epoch_end(self) -> None:
        """Log validation metrics."""
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        """Log test metrics."""
        self._log_epoch_metrics("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Trainable weights only, plus the class text embeddings so the checkpoint is self-contained."""
        super().on_save_checkpoint(checkpoint)
        if self.text_embeddings is not None:
            checkpoint["usvl"]["text_embeddings"] = self.text_embeddings.cpu()
        checkpoint["usvl"]["class_names"] = self.class_names

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the class text embeddings saved with the checkpoint."""
        super().on_load_checkpoint(checkpoint)
        embeddings = checkpoint.get("usvl", {}).get("text_embeddings")
        if embeddings is not None and self.text_embeddings is None:
            self.set_text_embeddings(embeddings)
