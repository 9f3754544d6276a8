"""ContrastiveTask: stage-1 image-text training (symmetric InfoNCE) of the adapters and projections.

The towers stay frozen, so a caption's text-tower embedding never changes: each distinct caption is encoded once
and kept (:class:`CaptionEmbeddings`); only the trainable text projection runs per step. Validation and test report
image->text and text->image recall@1/5/10 on the split's pairs (:mod:`usvl.metrics.retrieval`) and, when the data
has classes, the zero-shot classification metrics of the class descriptions (``zeroshot_auroc``, ...), which show
what stage 1 buys before any supervised training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection

from usvl.data.intensity import IntensityStandardisation
from usvl.metrics import RetrievalRecall, caption_ids, classification_metrics
from usvl.models.adapters.base import Adapter
from usvl.models.encoders.base import VisionLanguageEncoder
from usvl.tasks.base import AdaptedEncoderTask, StepOutput
from usvl.tasks.gradient_check import parameters_without_gradient, unused_parameters_message

log = logging.getLogger(__name__)

GRADIENT_PROBE_CAPTIONS = ("A solid hypoechoic nodule.", "An anechoic cyst with smooth margins.")
"""Captions of the fit-start gradient check (it needs texts for the text projection and the temperature)."""


def info_nce(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, logit_scale: torch.Tensor | float,
             ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (the CLIP loss) of a batch of image-caption pairs.

    ``logits = logit_scale * cos(image_i, text_j)``; the loss is the mean of the image->text and text->image
    cross entropies. With ``ids``, pairs that share a caption id are all positives of each other (the target is
    uniform over them), so identical captions in one batch are not pushed apart; without, the target is the
    diagonal, as in CLIP.

    Args:
        image_embeddings: ``[B, D]`` (normalised here).
        text_embeddings: ``[B, D]`` (normalised here).
        logit_scale: The inverse temperature (e.g. ``1 / 0.07``).
        ids: Caption id per pair ``[B]``, or None.

    Returns:
        The scalar loss.
    """
    image = F.normalize(image_embeddings.float(), dim=-1)
    text = F.normalize(text_embeddings.float(), dim=-1)
    logits = logit_scale * image @ text.t()
    if ids is None:
        target = torch.arange(len(image), device=image.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    same = (ids[:, None] == ids[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)  # symmetric, so it serves both directions
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


class InfoNCELoss(nn.Module):
    """:func:`info_nce` as a module.

    Args:
        same_caption_positive: Treat pairs with identical captions in a batch as positives of each other.
    """

    def __init__(self, same_caption_positive: bool = True) -> None:
        super().__init__()
        self.same_caption_positive = same_caption_positive

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, logit_scale: torch.Tensor,
                ids: torch.Tensor) -> torch.Tensor:
        """The loss of a batch; ``ids`` are used only with ``same_caption_positive``."""
        return info_nce(image_embeddings, text_embeddings, logit_scale, ids if self.same_caption_positive else None)


class CaptionEmbeddings:
    """Frozen text-tower embeddings of captions, each distinct caption encoded once and kept on the CPU.

    Args:
        encoder: The encoder whose ``encode_text_raw`` (frozen text tower, before the projection) is used.
        chunk: Captions encoded per text-tower call.
    """

    def __init__(self, encoder: VisionLanguageEncoder, chunk: int = 256) -> None:
        self.encoder = encoder
        self.chunk = chunk
        self.table: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.table)

    def __call__(self, captions: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
        """Raw embeddings ``[N, text_dim]`` of ``captions`` on ``device``, encoding the ones not seen before."""
        new = [text for text in dict.fromkeys(captions) if text not in self.table]
        for start in range(0, len(new), self.chunk):
            part = new[start:start + self.chunk]
            with torch.no_grad():
                raw = self.encoder.encode_text_raw(part).detach().float().cpu()
            self.table.update(zip(part, raw, strict=True))
        return torch.stack([self.table[text] for text in captions]).to(device)


class ContrastiveTask(AdaptedEncoderTask):
    """Stage 1: align the image and text embeddings on image-caption pairs with a symmetric InfoNCE loss.

    Trains the adapters, both projections and (by default) the temperature; the towers stay frozen. Batches need
    ``image`` and ``caption`` (see :mod:`usvl.data.captions`); ``label`` feeds the zero-shot metrics when the data
    has classes. Checkpoints hold the trainable weights and the temperature, for ``init_from`` of a stage-2 task or
    of :class:`~usvl.tasks.zeroshot.ZeroShotClassificationTask`.

    Args:
        encoder: The vision-language encoder.
        num_classes: Classes of the data (linked from the data module); with fewer than two, no zero-shot metrics
            (and no class descriptions are encoded).
        class_names: Class names in label order (linked from the data module).
        adapter: How to adapt the image tower.
        optimizer: Optimizer factory.
        scheduler: Learning-rate scheduler factory.
        channels_last: Run convolutions in channels-last memory format.
        temperature: Initial temperature (CLIP: 0.07); the logit scale is ``1 / temperature``.
        learnable_temperature: Learn the temperature (as CLIP, through ``log(1 / temperature)``, the scale clamped
            to ``max_logit_scale``); ``False`` keeps it fixed (the NextGen-UIA stage 1).
        max_logit_scale: Upper clamp of the logit scale (CLIP: 100).
        same_caption_positive: Pairs with identical captions in a batch are positives of each other (lexicon
            captions repeat); ``False``: the CLIP diagonal target.
        retrieval_ks: The K of the recall@K metrics.
        init_from: A stage-1 checkpoint to start from (see :class:`~usvl.tasks.base.AdaptedEncoderTask`).
        intensity_standardisation: Per-image grey-level standardisation before the encoder (``none``,
            ``percentile``, ``equalise``; see :class:`~usvl.tasks.base.AdaptedEncoderTask`).

    Raises:
        ValueError: ``temperature`` is not positive or ``max_logit_scale`` is below ``1 / temperature``.
    """

    metric_stages = ("val", "test")
    progress_bar_metrics = ("zeroshot_auroc",)

    needs_text_tower = True
    """Captions are encoded during training: the ``TextEmbeddingCache`` keeps the text tower loaded."""

    def __init__(
        self,
        encoder: VisionLanguageEncoder,
        num_classes: int = 0,
        class_names: Sequence[str] | None = None,
        adapter: Adapter | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        channels_last: bool = True,
        temperature: float = 0.07,
        learnable_temperature: bool = True,
        max_logit_scale: float = 100.0,
        same_caption_positive: bool = True,
        retrieval_ks: Sequence[int] = (1, 5, 10),
        init_from: str | None = None,
        intensity_standardisation: IntensityStandardisation = "none",
    ) -> None:
        super().__init__(encoder, adapter, optimizer, scheduler, channels_last, init_from, intensity_standardisation)
        self.save_hyperparameters(ignore=["encoder", "adapter", "optimizer", "scheduler"])
        if not temperature > 0 or max_logit_scale < 1.0 / temperature:
            raise ValueError(f"temperature must be positive and 1 / temperature at most max_logit_scale, got "
                             f"temperature {temperature}, max_logit_scale {max_logit_scale}")
        self.set_classes(num_classes, class_names)
        self.uses_text = num_classes >= 2
        initial = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.logit_scale = nn.Parameter(initial)
        else:
            self.register_buffer("logit_scale", initial)
        self.max_logit_scale = max_logit_scale
        self.same_caption_positive = same_caption_positive
        self.caption_embeddings = CaptionEmbeddings(encoder)
        for stage in self.metric_stages:
            setattr(self, f"{stage}_retrieval", RetrievalRecall(retrieval_ks))
        self.configure_task(None)

    def configure_losses(self) -> nn.Module:
        """Symmetric InfoNCE."""
        return InfoNCELoss(self.same_caption_positive)

    def configure_metrics(self) -> MetricCollection:
        """The zero-shot classification metrics (``zeroshot_auroc``, ...) when the data has classes, else none."""
        if not self.uses_text:
            return MetricCollection({})
        return MetricCollection({f"zeroshot_{name}": metric
                                 for name, metric in classification_metrics(self.num_classes).items()})

    def scale(self) -> torch.Tensor:
        """The logit scale (inverse temperature), clamped to ``max_logit_scale``."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings ``[B, D]`` of a uint8 image batch."""
        features = self.encoder.encode_image(self.prepare_images(images))
        return F.normalize(features.global_embedding.float(), dim=-1)

    def embed_texts(self, captions: Sequence[str]) -> torch.Tensor:
        """Unit text embeddings ``[N, D]`` of captions (cached frozen text-tower output, trainable projection)."""
        raw = self.caption_embeddings(captions, self.device)
        return F.normalize(self.encoder.project_text(raw).float(), dim=-1)

    def forward(self, images: torch.Tensor, captions: Sequence[str] | None = None) -> torch.Tensor:
        """Scaled similarities ``[B, N]`` of images with captions, or with the class prototypes (zero-shot logits)."""
        image = self.embed_images(images)
        text = self.embed_texts(captions) if captions is not None else F.normalize(self.class_text().float(), dim=-1)
        return self.scale() * image @ text.t()

    def compute_step(self, batch: dict[str, Any], stage: str) -> StepOutput:
        """InfoNCE of the batch; outside training also the retrieval and zero-shot metric inputs.

        Raises:
            KeyError: The batch has no ``caption`` (the data module yields no image-caption pairs).
        """
        if "caption" not in batch:
            raise KeyError("ContrastiveTask needs image-caption batches: use usvl.data.captions."
                           "SyntheticCaptionDataModule or usvl.data.captions.CaptionCSVDataModule as the data module")
        captions = list(batch["caption"])
        image = self.embed_images(batch["image"])
        text = self.embed_texts(captions)
        ids = caption_ids(captions).to(self.device)
        scale = self.scale()
        loss = self.loss(image, text, scale, ids)
        labels = batch["label"]
        predictions = image.new_zeros(0)
        if stage != "train":
            getattr(self, f"{stage}_retrieval").update(image, text, ids)
            if self.uses_text:
                prototypes = F.normalize(self.class_text().float(), dim=-1)
                probabilities = (scale * image @ prototypes.t()).softmax(dim=-1)
                predictions = probabilities[:, 1] if self.num_classes == 2 else probabilities
        return StepOutput(loss, predictions, labels)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> StepOutput | None:
        """Test loss and metrics; the step's output goes to the callbacks only when it holds class predictions."""
        output = self._shared_step(batch, "test")
        return output if self.uses_text else None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Clamp the learnable log scale to ``[0, log(max_logit_scale)]`` after each step, as CLIP does."""
        if isinstance(self.logit_scale, nn.Parameter):
            with torch.no_grad():
                self.logit_scale.clamp_(0.0, math.log(self.max_logit_scale))

    def _log_retrieval(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_retrieval")
        if not metric.update_called:
            return
        values = {f"{stage}/{name}": value for name, value in metric.compute().items()}
        self.log_dict(values, prog_bar=False)
        self.log(f"{stage}/temperature", 1.0 / self.scale().detach())
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        """Log the zero-shot and retrieval metrics of validation."""
        super().on_validation_epoch_end()
        self._log_retrieval("val")

    def on_test_epoch_end(self) -> None:
        """Log the zero-shot and retrieval metrics of the test."""
        super().on_test_epoch_end()
        self._log_retrieval("test")

    def on_train_epoch_end(self) -> None:
        """Log how many distinct captions are cached (each was encoded once)."""
        super().on_train_epoch_end()
        log.debug("Caption embeddings cached: %d distinct captions", len(self.caption_embeddings))

    def check_gradients(self, image_size: int | Sequence[int]) -> None:
        """Check that every trainable parameter gets a gradient from the image-caption logits.

        As :meth:`AdaptedEncoderTask.check_gradients`, on two random images against two fixed captions (so the
        text projection and the temperature are in the graph, with or without class descriptions).

        Raises:
            RuntimeError: Some trainable parameters never receive a gradient; the message names them.
        """
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            images = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8, device=self.device)
            unused = parameters_without_gradient(self, lambda: self(images, GRADIENT_PROBE_CAPTIONS))
        if unused:
            raise RuntimeError(unused_parameters_message(self, unused))

    def trainable_state_keys(self) -> set[str]:
        """Trainable weights, and the temperature whether learnt or fixed (``init_from`` reads it).

        The learnable temperature sits on the task itself, so the base rule would also list the task's own buffers;
        only those in the state dict (not the non-persistent normalisation constants) are kept.
        """
        return (super().trainable_state_keys() | {"logit_scale"}) & set(self.state_dict())
