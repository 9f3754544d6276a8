"""Full fine-tuning of the image tower, and the linear probe (:class:`NoAdapter`) for comparison."""

from __future__ import annotations

from torch import nn

from usvl.models.adapters.base import Adapter, NoAdapter
from usvl.models.encoders.base import VisionLanguageEncoder

__all__ = ["FullFineTune", "NoAdapter"]


class FullFineTune(Adapter):
    """Unfreeze the whole image tower; the text tower stays frozen (projections stay trainable).

    The tower is flagged ``usvl_adapter``, so ``encoder.train()`` puts it in train mode: batch-norm statistics update
    and dropout is active, as in ordinary fine-tuning. Every tower weight (and buffer) is then trainable state, so
    checkpoints hold the whole tower. Usually paired with a small learning rate (the reference forces 1e-6).

    Args:
        tower: Qualified name of the image tower inside the encoder; ``None`` uses the encoder's
            ``image_tower_path`` (``image_tower``, open_clip's ``model.visual``, transformers' ``model.vision_model``).
    """

    name = "full"

    def __init__(self, tower: str | None = None) -> None:
        self.tower = tower

    def apply(self, encoder: VisionLanguageEncoder) -> list[nn.Module]:
        """Make the encoder's image tower trainable in place and return it.

        Raises:
            ValueError: The encoder has no such tower.
        """
        path = self.tower or getattr(encoder, "image_tower_path", "image_tower")
        try:
            tower = encoder.get_submodule(path)
        except AttributeError:
            encoder_id = getattr(encoder, "encoder_id", type(encoder).__name__)
            raise ValueError(f"Full fine-tuning: encoder {encoder_id} has no image tower '{path}'") from None
        tower.requires_grad_(True)
        tower.usvl_adapter = True
        if isinstance(encoder, VisionLanguageEncoder):
            encoder.train(encoder.training)
        return [tower]
