"""Shared machinery of usvl LightningModules: frozen encoder + adapter, trainable-only checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from usvl.models.adapters.base import Adapter, NoAdapter
from usvl.models.encoders.base import VisionLanguageEncoder
from usvl.models.heads.classification import class_prototypes

log = logging.getLogger(__name__)


class AdaptedEncoderTask(pl.LightningModule):
    """Base task: injects the adapter into the frozen encoder and saves only trainable weights.

    Args:
        encoder: The vision-language encoder (frozen towers, trainable projections).
        adapter: How to adapt the image tower; ``None`` trains projections and head only.
        optimizer: Optimizer factory, called with the trainable parameters.
        scheduler: Learning-rate scheduler factory, stepped per optimisation step.
        channels_last: Run convolutions in channels-last memory format (about 1.4x faster training of the
            EfficientNet tower on a CPU, see BENCHMARKS.md).
    """

    def __init__(
        self,
        encoder: VisionLanguageEncoder,
        adapter: Adapter | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.adapter = adapter or NoAdapter()
        self.adapter_layers = self.adapter.apply(encoder)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.strict_loading = False
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.encoder.to(memory_format=torch.channels_last)
        mean = torch.tensor(encoder.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(encoder.image_std).view(1, 3, 1, 1)
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)
        self.num_classes = 0
        self.class_names: list[str] = []
        self.text_embeddings: torch.Tensor | None = None

    def set_classes(self, num_classes: int, class_names: Sequence[str] | None) -> None:
        """Record the classes (linked from the data module); names default to ``"0"``, ``"1"``, ...

        Raises:
            ValueError: The number of names differs from ``num_classes``.
        """
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")

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

    def parameter_counts(self) -> dict[str, int]:
        """Trainable and total parameter counts (frozen parts outside the module tree included in the total)."""
        total = sum(p.numel() for p in self.parameters()) + self.encoder.unregistered_parameters
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"trainable_params": trainable, "total_params": total}

    def on_fit_start(self) -> None:
        """Put the frozen towers in eval mode (fixed batch-norm statistics) and log the parameter counts."""
        self.encoder.train(self.training)
        counts = self.parameter_counts()
        log.info("Parameters: %s trainable of %s (%.2f%%)", f"{counts['trainable_params']:,}",
                 f"{counts['total_params']:,}", 100.0 * counts["trainable_params"] / max(counts["total_params"], 1))

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or float ``[B, 1|3, H, W]`` in [0, 255] -> the encoder's normalised float input."""
        x = images.float() / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return ((x - self.image_mean) / self.image_std).contiguous(memory_format=self.memory_format)

    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        """Loss of a batch for ``stage`` (``train``, ``val``, ``test``), logging it and updating the stage's metrics."""
        raise NotImplementedError

    def _log_epoch_metrics(self, stage: str) -> None:
        """Compute, log and reset the metrics of ``stage``."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss on a training batch."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Validation loss; update the validation metrics."""
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Test loss; update the test metrics."""
        self._shared_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        """Log validation metrics."""
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        """Log test metrics."""
        self._log_epoch_metrics("test")

    def configure_optimizers(self) -> Any:
        """Optimise trainable parameters only; the scheduler, if any, steps every optimisation step."""
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(parameters)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if hasattr(scheduler, "set_total_steps"):
            scheduler.set_total_steps(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def trainable_state_keys(self) -> set[str]:
        """State-dict keys of trainable parameters, and of buffers in trainable or adapted modules."""
        keys = {name for name, p in self.named_parameters() if p.requires_grad}
        for module_name, module in self.named_modules():
            adapted = getattr(module, "usvl_adapter", False)
            if adapted or any(p.requires_grad for p in module.parameters(recurse=False)):
                prefix = f"{module_name}." if module_name else ""
                keys.update(f"{prefix}{name}" for name, _ in module.named_buffers(recurse=False))
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights (frozen towers reload from their packages), plus classes and text embeddings."""
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["usvl"] = {"encoder_id": self.encoder.encoder_id, "trainable_only": True,
                              "class_names": self.class_names}
        if self.text_embeddings is not None:
            checkpoint["usvl"]["text_embeddings"] = self.text_embeddings.cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that every trainable weight is present, and restore the saved class text embeddings.

        Raises:
            KeyError: The checkpoint misses trainable weights of this model.
        """
        missing = sorted(self.trainable_state_keys() - set(checkpoint["state_dict"]))
        if missing:
            raise KeyError(f"Checkpoint lacks {len(missing)} trainable weights, e.g. {missing[:5]}")
        embeddings = checkpoint.get("usvl", {}).get("text_embeddings")
        if embeddings is not None and self.text_embeddings is None:
            self.set_text_embeddings(embeddings)
