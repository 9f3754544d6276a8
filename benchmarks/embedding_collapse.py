"""Watch a classification run for embedding collapse: a callback that prints what the prompt-similarity head sees.

Some thyroid classification runs never leave the chance plateau (training loss ln 2, one predicted class): two of the
three LoRA seeds of the embedded grid, and seed 2 of the 5-epoch demo schedule at learning rate 3e-3. This callback
prints, every ``every`` training steps, the batch's mean image-embedding norm, the mean cosine between the image
embeddings of different images (1 = every image maps to the same direction), the spread of the logits over the
batch, the mean logit gap between the classes, the cosine between the two class prototypes and the logit scale.

Run (the callback is added to the shipped recipe; ``benchmarks`` must be importable):
``PYTHONPATH=benchmarks usvl fit --config configs/thyroid_cls.yaml --trainer.max_epochs 5
--model.init_args.optimizer.init_args.lr 0.003 --seed_everything 2
--trainer.callbacks+=embedding_collapse.CollapseMonitor``
and read the ``collapse step ...`` lines. ``embedding_collapse.UnitLinearHead`` (``--model.init_args.head.class_path
embedding_collapse.UnitLinearHead``) is the variant that feeds the linear classifier the unit-normalised embedding.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer

from usvl.models.encoders.base import ImageFeatures
from usvl.models.heads import PromptSimilarityHead


def collapse_statistics(embedding: torch.Tensor, logits: torch.Tensor,
                        class_text: torch.Tensor | None) -> dict[str, float]:
    """What one forward pass of the head shows about collapse.

    Args:
        embedding: Image embeddings ``[B, D]`` (before normalisation), ``B >= 2``.
        logits: The head's logits ``[B, K]``.
        class_text: Class prototypes ``[K, D]``, or None for a head without text.

    Returns:
        ``embedding_norm`` (mean L2 norm), ``mean_pair_cosine`` (mean cosine over pairs of different images),
        ``logit_spread`` (standard deviation over the batch, averaged over classes), ``logit_gap`` (mean of the
        last minus the first class's logit) and ``prototype_cosine`` (first two prototypes; NaN without text).
    """
    embedding, logits = embedding.detach().float(), logits.detach().float()
    unit = F.normalize(embedding, dim=-1)
    count = unit.shape[0]
    cosine = unit @ unit.t()
    prototype_cosine = float("nan")
    if class_text is not None and class_text.shape[0] >= 2:
        prototype_cosine = F.cosine_similarity(class_text[0:1], class_text[1:2]).item()
    return {
        "embedding_norm": embedding.norm(dim=-1).mean().item(),
        "mean_pair_cosine": ((cosine.sum() - cosine.diagonal().sum()) / (count * count - count)).item(),
        "logit_spread": logits.std(dim=0).mean().item(),
        "logit_gap": (logits[:, -1] - logits[:, 0]).mean().item(),
        "prototype_cosine": prototype_cosine,
    }


class CollapseMonitor(Callback):
    """Print :func:`collapse_statistics` of the head's latest training forward pass every ``every`` steps.

    Args:
        every: Print every this many training batches.
    """

    def __init__(self, every: int = 2) -> None:
        self.every = every
        self.latest: dict[str, float] = {}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Hook the task's head so that each forward pass records its statistics."""
        def record(head: torch.nn.Module, inputs: tuple, logits: torch.Tensor) -> None:
            features, class_text = inputs
            if head.training and features.global_embedding.shape[0] >= 2:
                self.latest = collapse_statistics(features.global_embedding, logits, class_text)
                if hasattr(head, "log_scale"):
                    self.latest["scale"] = head.log_scale.exp().item()

        pl_module.head.register_forward_hook(record)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        """Print the latest statistics with the batch's loss."""
        if batch_idx % self.every or not self.latest:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        values = " ".join(f"{name} {value:.4f}" for name, value in self.latest.items())
        print(f"collapse step {trainer.global_step} loss {float(loss):.4f} {values}", flush=True)


class UnitLinearHead(PromptSimilarityHead):
    """:class:`PromptSimilarityHead` whose linear classifier reads the unit-normalised image embedding."""

    def forward(self, features: ImageFeatures, class_text: torch.Tensor) -> torch.Tensor:
        """The parent's logits, computed from the unit-normalised embedding (the cosine term is unchanged)."""
        unit = F.normalize(features.global_embedding, dim=-1)
        return super().forward(dataclasses.replace(features, global_embedding=unit), class_text)
