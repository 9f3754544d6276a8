"""Shared machinery of usvl LightningModules: adapted frozen encoder, step template, trainable-only checkpoints."""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MetricCollection

from usvl.data.intensity import IntensityStandardisation, check_standardisation, standardise_intensity
from usvl.models.adapters.base import Adapter, NoAdapter
from usvl.models.encoders.base import VisionLanguageEncoder
from usvl.models.fold_batch_norm import unfold_batch_norms
from usvl.models.heads.classification import class_prototypes
from usvl.tasks.gradient_check import parameters_without_gradient, unused_parameters_message
from usvl.tasks.init_from import resolve_checkpoint, select_weights, transferable_keys
from usvl.tasks.optim import prefer_fused
from usvl.tasks.schedules import SizedByTrainer
from usvl.utils.errors import UserError
from usvl.utils.rng import collect_rng_states, restore_rng_states

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")


@dataclass
class StepOutput:
    """What a task computes on one batch: the loss, and the arguments of its metrics' ``update``.

    Attributes:
        loss: Scalar loss of the batch.
        predictions: First argument of the metrics' ``update`` (probabilities, masks, ...).
        target: Second argument of the metrics' ``update`` (labels, masks); its length is the batch size.
        metric_kwargs: Further keyword arguments of the metrics' ``update`` (e.g. the pixel ``spacing``).
    """

    loss: torch.Tensor
    predictions: torch.Tensor
    target: torch.Tensor
    metric_kwargs: dict[str, Any] = field(default_factory=dict)


class AdaptedEncoderTask(pl.LightningModule, ABC):
    """Base task: adapts the frozen encoder, runs the shared step and epoch-end logic, saves trainable weights only.

    Subclasses build their head, then call :meth:`configure_task` with the injected loss; they implement the hooks
    :meth:`configure_losses` (the default loss), :meth:`configure_metrics` (the metrics of one stage, cloned per
    stage in :attr:`metric_stages`), :meth:`compute_step` (loss and metric inputs of a batch) and ``forward``.
    ``training_step``, ``validation_step``, ``test_step`` and the epoch-end logging are shared: every stage logs
    ``<stage>/loss`` and its metrics as ``<stage>/<name>``.

    At the start of training the task checks that every trainable parameter can receive a gradient (one forward
    and backward pass of two random images at the data module's ``image_size``; see :meth:`on_train_start`).

    Args:
        encoder: The vision-language encoder (frozen towers, trainable projections).
        adapter: How to adapt the image tower; ``None`` trains projections and head only.
        optimizer: Optimizer factory, called with the trainable parameters.
        scheduler: Learning-rate scheduler factory, stepped per optimisation step.
        channels_last: Run convolutions in channels-last memory format (about 1.4x faster training of the
            EfficientNet tower on a CPU, see BENCHMARKS.md).
        init_from: A stage-1 checkpoint (``ContrastiveTask``; a ``.ckpt`` file, or a run folder whose newest
            ``*.ckpt`` is taken) to initialise the adapters, the projections and a ``logit_scale`` temperature
            from, at ``setup`` (before a ``ckpt_path`` is restored, which then wins). Strict: every encoder weight
            this model trains must be in the checkpoint with the same shape, and the checkpoint may hold no encoder
            weight this model lacks (e.g. another Mona variant); the head is never loaded. See
            :mod:`usvl.tasks.init_from`.
        intensity_standardisation: Standardise each image's grey levels before the encoder: ``none``,
            ``percentile`` (1st-99th percentile stretched to [0, 1]) or ``equalise`` (histogram equalisation); see
            :mod:`usvl.data.intensity`. Applied in every stage and in exported graphs.
    """

    metric_stages: tuple[str, ...] = STAGES
    """Stages whose metrics are accumulated and logged; the others log their loss only."""

    progress_bar_metrics: tuple[str, ...] | None = None
    """Validation metrics shown in the progress bar (names without the stage prefix); ``None`` shows all."""

    uses_text: bool = True
    """Whether the head reads the class text; without it the ``TextEmbeddingCache`` callback encodes nothing."""

    def __init__(
        self,
        encoder: VisionLanguageEncoder,
        adapter: Adapter | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        channels_last: bool = True,
        init_from: str | None = None,
        intensity_standardisation: IntensityStandardisation = "none",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.adapter = adapter or NoAdapter()
        self.adapter.apply(encoder)
        unfold_batch_norms(encoder)  # any folding was checked on the encoder before its adapters
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
        self.loss: nn.Module | None = None
        self.init_from = init_from
        self.intensity_standardisation = check_standardisation(intensity_standardisation)
        self.initialised_from: str | None = None
        self.domain_range: dict[str, Any] | None = None

    @abstractmethod
    def configure_losses(self) -> nn.Module:
        """The task's default loss, used when none is injected."""

    @abstractmethod
    def configure_metrics(self) -> MetricCollection:
        """The metrics of one stage; :meth:`configure_task` clones them for each of :attr:`metric_stages`."""

    @abstractmethod
    def compute_step(self, batch: dict[str, Any], stage: str) -> StepOutput:
        """Loss and metric inputs of a batch for ``stage`` (``train``, ``val``, ``test``)."""

    def configure_task(self, loss: nn.Module | None) -> None:
        """Set the loss (the injected one, else :meth:`configure_losses`) and one metric collection per stage.

        Subclasses call it at the end of ``__init__``, once the attributes the hooks read are set.
        """
        self.loss = loss if loss is not None else self.configure_losses()
        metrics = self.configure_metrics()
        for stage in self.metric_stages:
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}/"))

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

    def setup(self, stage: str) -> None:
        """Initialise from the ``init_from`` checkpoint once, before Lightning restores any ``ckpt_path``."""
        if self.init_from and self.initialised_from is None:
            self.load_init_from(self.init_from)

    def load_init_from(self, path: str) -> dict[str, torch.Tensor]:
        """Load adapters, projections and temperature from a stage-1 checkpoint (see ``init_from``).

        Returns:
            The loaded tensors by state-dict key.

        Raises:
            FileNotFoundError: No checkpoint at ``path``.
            usvl.tasks.init_from.InitFromError: The checkpoint does not fit this model (names, shapes).
        """
        file = resolve_checkpoint(path)
        checkpoint = torch.load(file, map_location="cpu", weights_only=False)
        info = checkpoint.get("usvl", {})
        source_label = f"checkpoint {file} (adapter {info.get('adapter', 'unknown')})"
        target_label = f"model (adapter {describe_adapter(self.adapter)})"
        state = self.state_dict()
        weights = select_weights(checkpoint["state_dict"], state, transferable_keys(self.trainable_state_keys(), state),
                                 source_label, target_label)
        self.load_state_dict(weights, strict=False)
        source_encoder = info.get("encoder_id")
        if source_encoder and source_encoder != self.encoder.encoder_id:
            log.warning("init_from %s: its encoder is %s, this model's is %s (all names and shapes fit)", file,
                        source_encoder, self.encoder.encoder_id)
        log.info("Initialised %d tensors (%s values: adapters, projections%s) from %s", len(weights),
                 f"{sum(v.numel() for v in weights.values()):,}",
                 ", temperature" if any(not k.startswith("encoder.") for k in weights) else "", file)
        self.initialised_from = str(file)
        return weights

    def on_fit_start(self) -> None:
        """Put the frozen towers in eval mode (fixed batch-norm statistics) and log the parameter counts."""
        self.encoder.train(self.training)
        counts = self.parameter_counts()
        log.info("Parameters: %s trainable of %s (%.2f%%)", f"{counts['trainable_params']:,}",
                 f"{counts['total_params']:,}", 100.0 * counts["trainable_params"] / max(counts["total_params"], 1))

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or float ``[B, 1|3, H, W]`` in [0, 255] -> the encoder's normalised float input."""
        x = standardise_intensity(images.float() / 255.0, self.intensity_standardisation)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return ((x - self.image_mean) / self.image_std).contiguous(memory_format=self.memory_format)

    def stage_metrics(self, stage: str) -> MetricCollection | None:
        """The metric collection of ``stage``, or ``None`` when the stage has none."""
        return getattr(self, f"{stage}_metrics", None) if stage in self.metric_stages else None

    def _shared_step(self, batch: dict[str, Any], stage: str) -> StepOutput:
        """Loss and predictions of a batch for ``stage``, logging the loss and updating the stage's metrics."""
        output = self.compute_step(batch, stage)
        metrics = self.stage_metrics(stage)
        if metrics is not None:
            metrics.update(output.predictions, output.target, **output.metric_kwargs)
        self.log(f"{stage}/loss", output.loss, prog_bar=True, on_step=stage == "train", on_epoch=True,
                 batch_size=len(output.target), sync_dist=True)  # with DDP: the mean over every rank's batches
        return output

    def _log_epoch_metrics(self, stage: str) -> None:
        """Compute, log and reset the metrics of ``stage`` (nothing when no batch updated them)."""
        metrics = self.stage_metrics(stage)
        if metrics is None or not all(metric.update_called for metric in metrics.values()):
            return
        values = metrics.compute()
        shown = self.progress_bar_metrics
        in_bar = {k: v for k, v in values.items() if stage == "val" and (shown is None or k[len(stage) + 1:] in shown)}
        self.log_dict(in_bar, prog_bar=True)
        self.log_dict({k: v for k, v in values.items() if k not in in_bar})
        metrics.reset()

    def on_train_start(self) -> None:
        """Run :meth:`check_gradients` at the data module's ``image_size`` before the first optimisation step.

        Lightning calls the callbacks' ``on_train_start`` first; the text embeddings are set earlier still, in
        ``TextEmbeddingCache.setup``. Without an ``image_size`` on the data module the check is skipped, with a
        log line.
        """
        size = getattr(self.trainer.datamodule, "image_size", None)
        if size is None:
            log.info("Gradient check skipped: the data module has no image_size")
            return
        self.check_gradients(size)

    def check_gradients(self, image_size: int | Sequence[int]) -> None:
        """Check that every trainable parameter can receive a gradient.

        One forward and backward pass of two random images of ``image_size`` through ``forward``, inside
        ``torch.random.fork_rng`` and with all buffers restored afterwards, so the run's random stream and
        batch-norm statistics are unchanged and no ``.grad`` is left behind. It costs about one training step at
        batch size 2.

        Raises:
            RuntimeError: Some trainable parameters never receive a gradient; the message names them and says
                how to place adapters and taps.
        """
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            images = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8, device=self.device)
            unused = parameters_without_gradient(self, lambda: self.gradient_check_output(images))
        if unused:
            raise RuntimeError(unused_parameters_message(self, unused))

    def gradient_check_output(self, images: torch.Tensor) -> torch.Tensor:
        """Every trainable output of the task for ``images`` (``forward``; tasks with more heads add theirs)."""
        return self(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss on a training batch.

        Raises:
            NonFiniteLossError: The loss is NaN or infinite; the message names the global step and the batch's
                images, and what to change.
        """
        loss = self._shared_step(batch, "train").loss
        if not bool(torch.isfinite(loss.detach())):
            raise NonFiniteLossError(non_finite_loss_message(loss, self.global_step, self.current_epoch, batch))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Validation loss; update the validation metrics."""
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> StepOutput:
        """Test loss; update the test metrics; the step's output goes to the callbacks (``TestCaseWriter``)."""
        return self._shared_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        """Log validation metrics."""
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        """Log test metrics."""
        self._log_epoch_metrics("test")

    def on_train_epoch_end(self) -> None:
        """Log training metrics."""
        self._log_epoch_metrics("train")

    def configure_optimizers(self) -> Any:
        """Optimise trainable parameters only; the scheduler, if any, steps every optimisation step.

        Adam and AdamW take torch's fused step on CUDA unless the config chose an implementation
        (:func:`usvl.tasks.optim.prefer_fused`).
        """
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = prefer_fused(self.optimizer_factory(parameters))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if isinstance(scheduler, SizedByTrainer):
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
        """Keep only trainable weights (frozen towers reload from their packages), plus classes and text embeddings.

        The training domain's image statistics (``domain_range``, set by :class:`usvl.domain_monitor.
        DomainShiftMonitor` during fit) are stored as ``checkpoint["usvl"]["domain"]``.
        """
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["usvl"] = {"encoder_id": self.encoder.encoder_id, "trainable_only": True,
                              "class_names": self.class_names, "adapter": describe_adapter(self.adapter)}
        if getattr(self, "text_record", None):
            checkpoint["usvl"]["text"] = dict(self.text_record)  # descriptions, cache key, ablation
        if self.text_embeddings is not None:
            checkpoint["usvl"]["text_embeddings"] = self.text_embeddings.cpu()
        if self.domain_range:
            checkpoint["usvl"]["domain"] = dict(self.domain_range)  # training-domain image statistics
        # Lightning keeps optimiser, scheduler, loop and callback states (they are outside state_dict) but not the
        # global random streams; a fit resumed from this checkpoint restores them (see on_load_checkpoint).
        checkpoint["usvl"]["rng_states"] = collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the checkpoint fits this model; restore text embeddings, domain statistics and, fitting, RNG states.

        Resuming a fit (``usvl fit --ckpt_path last``) restores the random streams the checkpoint saved, so the
        resumed run shuffles and augments as the interrupted one would have; ``test``, ``validate`` and ``predict``
        leave them alone.

        Raises:
            CheckpointMismatchError: The checkpoint was trained with another encoder or adapter (both named).
            KeyError: The checkpoint misses trainable weights of this model.
        """
        info = checkpoint.get("usvl", {})
        check_checkpoint_fits(info, self.encoder.encoder_id, describe_adapter(self.adapter))
        missing = sorted(self.trainable_state_keys() - set(checkpoint["state_dict"]))
        if missing:
            raise KeyError(f"Checkpoint lacks {len(missing)} trainable weights, e.g. {missing[:5]}")
        if info.get("domain"):
            self.domain_range = dict(info["domain"])
        embeddings = info.get("text_embeddings")
        if embeddings is not None and self.text_embeddings is None:
            self.set_text_embeddings(embeddings)
        trainer = self._trainer
        if info.get("rng_states") is not None and trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            restore_rng_states(info["rng_states"])


def describe_adapter(adapter: Adapter) -> str:
    """A one-line description of an adapter spec (class and settings), for checkpoints and messages."""
    settings = ", ".join(f"{key}={value!r}" for key, value in vars(adapter).items() if not key.startswith("_"))
    return f"{type(adapter).__name__}({settings})"


TRAINING_ONLY_SETTINGS = ("dropout", "zero_init")
"""Adapter settings that change training only, not the weights' meaning; checkpoints may differ in them."""


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint was trained with another encoder or adapter than the model it is loaded into."""


def check_checkpoint_fits(info: dict[str, Any], encoder_id: str, adapter: str) -> None:
    """Refuse a checkpoint (its ``checkpoint["usvl"]`` record) of another encoder or adapter.

    Adapters compare by class and settings, except :data:`TRAINING_ONLY_SETTINGS`. Checkpoints without the record
    (older or foreign files) pass; the weight check that follows still applies.

    Raises:
        CheckpointMismatchError: The message names both encoders or both adapters and what to do.
    """
    stored_encoder, stored_adapter = info.get("encoder_id"), info.get("adapter")
    advice = ("Pass the config.yaml of the run that wrote the checkpoint (--config runs/<name>/version_N/config.yaml), "
              "or train a model with this configuration.")
    if stored_encoder and stored_encoder != encoder_id:
        raise CheckpointMismatchError(f"The checkpoint was trained with encoder {stored_encoder}, but this model's "
                                      f"encoder is {encoder_id}. {advice}")
    if stored_adapter and _structural(stored_adapter) != _structural(adapter):
        raise CheckpointMismatchError(f"The checkpoint was trained with adapter {stored_adapter}, but this model's "
                                      f"adapter is {adapter}. {advice}")


def _structural(adapter: str) -> str:
    """An adapter description without its training-only settings."""
    pattern = "|".join(TRAINING_ONLY_SETTINGS)
    return re.sub(rf"(, )?\b({pattern})=[^,)]*", "", adapter).replace("(, ", "(")


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; training stops instead of saving diverged weights."""


def non_finite_loss_message(loss: torch.Tensor, step: int, epoch: int, batch: dict[str, Any], listed: int = 16) -> str:
    """What a :class:`NonFiniteLossError` says: the value, the global step, the batch's image names, what to try."""
    names = [str(name) for name in batch.get("name") or []]
    shown = ", ".join(names[:listed]) + (f" and {len(names) - listed} more" if len(names) > listed else "")
    images = f"the batch's images: {shown}" if names else "the batch carries no image names"
    return (f"Training loss is {loss.detach().float().item()} at global step {step} (epoch {epoch}); {images}. "
            "Try a lower learning rate (--model.init_args.optimizer.init_args.lr), gradient clipping "
            "(--trainer.gradient_clip_val 1.0) or full precision (--trainer.precision 32-true), and check those "
            "images (usvl data check).")
