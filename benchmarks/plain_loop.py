"""The plain-PyTorch side of the benchmarks: usvl's own model and data, built from a config, trained without Lightning.

:func:`build` instantiates the model and the data module exactly as ``usvl fit --config ...`` does (the same
LightningCLI parser, links and defaults, ``run=False``) and fills the class-text embeddings from the text cache.
:class:`PlainTrainer` then trains that model with a bare loop: the data module's own training loader (batch size,
shuffling, workers), its batched augmentation, the model's forward and loss, backward, the optimizer the task would
build (:func:`usvl.tasks.optim.prefer_fused` included) and its scheduler, stepped per batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from clocks import now
from lightning.pytorch import LightningDataModule, LightningModule, seed_everything

from usvl.cli import USVLCLI
from usvl.tasks.optim import prefer_fused
from usvl.tasks.schedules import SizedByTrainer
from usvl.text import TextEmbeddingCache


def build(config_args: list[str], seed: int = 0) -> tuple[LightningModule, LightningDataModule, torch.device]:
    """The model, the data module (set up for ``fit``) and the device of ``usvl fit <config_args>``.

    Args:
        config_args: The arguments after ``usvl fit`` (``--config ...`` and overrides).
        seed: ``seed_everything`` before the model is built, as the CLI does.
    """
    seed_everything(seed)
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  seed_everything_default=seed, args=config_args)
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    for callback in trainer.callbacks:
        if isinstance(callback, TextEmbeddingCache):
            callback.setup(trainer, model, "fit")
    datamodule.setup("fit")
    device = trainer.strategy.root_device
    return model.to(device), datamodule, device


class PlainTrainer:
    """A bare training loop over a usvl model and data module.

    Args:
        model: The task (a LightningModule used as a plain ``nn.Module``: ``forward`` and ``loss``).
        datamodule: Its data module, set up for ``fit``.
        device: Where the model is.
        total_steps: Optimisation steps the scheduler is sized for.
    """

    def __init__(self, model: Any, datamodule: Any, device: torch.device, total_steps: int) -> None:
        self.model = model
        self.datamodule = datamodule
        self.device = device
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = prefer_fused(model.optimizer_factory(trainable))
        self.scheduler = model.scheduler_factory(self.optimizer) if model.scheduler_factory is not None else None
        if isinstance(self.scheduler, SizedByTrainer):
            self.scheduler.set_total_steps(total_steps)
        self.augment = datamodule.augment.to(device) if datamodule.augment is not None else None
        model.train()

    def prepare(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader batch on the device, augmented as in training: images and labels."""
        images = batch["image"].to(self.device)
        if self.augment is not None:
            images, _ = self.augment(images, None)
        return images, batch["label"].to(self.device)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One optimisation step: forward, loss, backward, optimizer and scheduler."""
        loss = self.model.loss(self.model(images).float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def epoch(self, batches: Iterable[dict[str, Any]] | None = None) -> tuple[int, float]:
        """Train one epoch; its images and the seconds from the start of its first step to the end of its last.

        The window matches :class:`clocks.StepClock`'s: the first batch is loaded and augmented before it opens.
        """
        start, end, images_seen = None, 0.0, 0
        for batch in batches if batches is not None else self.datamodule.train_dataloader():
            images, labels = self.prepare(batch)
            if start is None:
                start = now(self.model)
            self.step(images, labels)
            end = now(self.model)
            images_seen += len(labels)
        return images_seen, end - (start or end)
