"""LoRA (low-rank adaptation) of the image tower, injected with peft.

Each targeted layer ``W`` (a frozen ``nn.Linear``) becomes ``W x + b + s · B A dropout(x)`` with trainable
``A ∈ R^{r×in}`` (Kaiming-uniform) and ``B ∈ R^{out×r}`` (zeros, so the adapted encoder equals the frozen one at step
0). The scaling is ``s = alpha / sqrt(r)`` with rsLoRA (``use_rslora=True``, as in the reference) and ``alpha / r``
otherwise.

Default targets are the fused ``attn.qkv`` and the ``attn.proj`` Linear layers of every block of a timm ViT image
tower (also open_clip's timm ``trunk``), as the reference does for BiomedCLIP: per block at width 768 and r=16 that
is ``16·(768+2304) + 16·(768+768) = 73,728`` parameters, 884,736 over 12 blocks.

Differences from the reference (``src/adapters/lora.py``), on purpose:

* Default ``alpha`` is 16 (scaling 4.0 at r=16); the reference uses α=32 (scaling 8.0). Set ``alpha=32`` to match.
* The biases of the wrapped layers stay frozen (the reference trains them in stage 1 without saving them).
* The text tower is never adapted.

open_clip's own ``VisionTransformer`` (``resblocks.N.attn`` is an ``nn.MultiheadAttention`` that reads its
projection weights directly) is not covered by the default targets; LoRA on ``out_proj`` there would have no effect.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from usvl.models.adapters.base import Adapter
from usvl.models.encoders.base import VisionLanguageEncoder

DEFAULT_LORA_TARGETS = r"image_tower\.(?:.+\.)?blocks\.\d+\.attn\.(?:qkv|proj)"
"""Qualified names (from the encoder root) of the layers LoRA adapts by default: ``attn.qkv``/``attn.proj``."""

LORA_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
"""Layer types LoRA can adapt here."""


def _lora_layer_type() -> type[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return LoraLayer


def lora_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The peft LoRA layers inside ``module`` as ``(qualified name, layer)`` pairs."""
    layer_type = _lora_layer_type()
    return [(name, child) for name, child in module.named_modules() if isinstance(child, layer_type)]


def match_targets(root: nn.Module, target_modules: str | Sequence[str]) -> list[str]:
    """Qualified names of the modules of ``root`` that ``target_modules`` selects.

    Args:
        root: The module whose ``named_modules()`` are matched.
        target_modules: A regular expression matched in full against each name, or a list of names each matching a
            module whose name equals it or ends with ``"." + name`` (peft's rule).
    """
    names = [name for name, _ in root.named_modules() if name]
    if isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        return [name for name in names if pattern.fullmatch(name)]
    targets = list(target_modules)
    return [name for name in names if any(name == t or name.endswith(f".{t}") for t in targets)]


class LoRAAdapter(Adapter):
    """Inject LoRA into the image tower's attention layers with peft; everything else stays as it was.

    The encoder stays a ``VisionLanguageEncoder``: the adapters are injected in place into
    ``encoder.<tower>`` (``peft.inject_adapter_in_model``), which replaces each target by a peft ``lora`` layer
    holding the frozen original as ``base_layer``. Only the ``lora_A``/``lora_B`` weights become trainable (the
    projections keep their state). Their modules are flagged ``usvl_adapter``, so ``encoder.train()`` turns on the
    LoRA dropout while the frozen tower (its own dropout included) stays in eval mode.

    Args:
        r: Rank of the update.
        alpha: Scale numerator: the update is multiplied by ``alpha / sqrt(r)`` (rsLoRA) or ``alpha / r``.
        dropout: Dropout on the LoRA branch's input (training only).
        target_modules: Which layers to adapt, by qualified name from the encoder root (e.g.
            ``image_tower.blocks.3.attn.qkv``): a regular expression matched in full, or a list of names or name
            suffixes. ``None`` uses :data:`DEFAULT_LORA_TARGETS` (``attn.qkv`` and ``attn.proj`` of every block).
            Only ``nn.Linear`` and ``nn.Conv2d`` layers inside the tower can be targets.
        use_rslora: Rank-stabilised scaling ``alpha / sqrt(r)`` (the reference's); ``False`` gives ``alpha / r``.
        tower: Attribute of the encoder holding the image tower.

    Raises:
        ValueError: ``r`` is not positive or ``dropout`` is outside ``[0, 1)``.
    """

    name = "lora"

    def __init__(
        self,
        r: int = 16,
        alpha: float = 16.0,
        dropout: float = 0.1,
        target_modules: str | list[str] | None = None,
        use_rslora: bool = True,
        tower: str = "image_tower",
    ) -> None:
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = DEFAULT_LORA_TARGETS if target_modules is None else target_modules
        if not isinstance(self.target_modules, str):
            self.target_modules = list(self.target_modules)
        self.use_rslora = use_rslora
        self.tower = tower

    def describe_targets(self) -> str:
        """The targets as written in messages: ``regex <pattern>`` or the list of names."""
        if isinstance(self.target_modules, str):
            return f"regex {self.target_modules}"
        return f"names {', '.join(self.target_modules)}"

    @property
    def scaling(self) -> float:
        """The factor applied to ``B A x``: ``alpha / sqrt(r)`` with rsLoRA, else ``alpha / r``."""
        return self.alpha / self.r**0.5 if self.use_rslora else self.alpha / self.r

    def targets(self, encoder: nn.Module) -> list[str]:
        """Qualified names (from the encoder root) of the layers this adapter would wrap.

        Raises:
            ValueError: No module of the image tower matches, or a match is not a supported layer type.
        """
        encoder_id = getattr(encoder, "encoder_id", type(encoder).__name__)
        tower = getattr(encoder, self.tower, None)
        if not isinstance(tower, nn.Module):
            raise ValueError(f"LoRA: encoder {encoder_id} has no image tower attribute '{self.tower}'")
        prefix = f"{self.tower}."
        matched = [name for name in match_targets(encoder, self.target_modules) if name.startswith(prefix)]
        if not matched:
            raise ValueError(
                f"LoRA target_modules ({self.describe_targets()}) match no module of the image tower of encoder "
                f"{encoder_id} ({type(tower).__name__}). The default targets the attn.qkv/attn.proj Linear layers "
                "of ViT blocks; CNN towers such as EfficientNet have none. Pass target_modules naming layers of "
                f"'{self.tower}' (qualified names from the encoder root), or use another adapter."
            )
        unsupported = [
            f"{name} ({type(encoder.get_submodule(name)).__name__})"
            for name in matched
            if not isinstance(encoder.get_submodule(name), LORA_MODULE_TYPES)
        ]
        if unsupported:
            supported = ", ".join(t.__name__ for t in LORA_MODULE_TYPES)
            raise ValueError(
                f"LoRA target_modules ({self.describe_targets()}) select layers of encoder {encoder_id} that are not "
                f"{supported}: {', '.join(unsupported[:5])}"
            )
        return matched

    def apply(self, encoder: VisionLanguageEncoder) -> list[nn.Module]:
        """Inject LoRA into the targeted layers of ``encoder.<tower>`` in place; return the peft LoRA layers.

        Raises:
            ValueError: No target matches (see :meth:`targets`), or the tower already holds LoRA layers.
        """
        from peft import LoraConfig, inject_adapter_in_model

        matched = self.targets(encoder)
        tower = getattr(encoder, self.tower)
        if lora_layers(tower):
            raise ValueError(f"The image tower of {getattr(encoder, 'encoder_id', '?')} already holds LoRA layers")
        relative = [name[len(self.tower) + 1 :] for name in matched]
        config = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules="|".join(re.escape(name) for name in relative),
            use_rslora=self.use_rslora,
            bias="none",
        )
        inject_adapter_in_model(config, tower)
        layers = lora_layers(tower)
        injected = sorted(name for name, _ in layers)
        if injected != sorted(relative):
            raise RuntimeError(f"peft injected LoRA into {injected}, expected {sorted(relative)}")
        for _, layer in layers:
            for part in (layer.lora_A, layer.lora_B, layer.lora_dropout):
                part.usvl_adapter = True
                part.requires_grad_(True)
        if isinstance(encoder, VisionLanguageEncoder):
            encoder.train(encoder.training)
        return [layer for _, layer in layers]

    @staticmethod
    def merge(encoder: nn.Module, unload: bool = True) -> int:
        """Fold every LoRA update into its base layer's weight, for inference or export.

        Outputs do not change (in eval mode, up to float rounding). Merged weights are no longer separate: a
        trainable-only checkpoint of a merged encoder does not hold the adaptation, so save before merging.

        Args:
            encoder: The module holding LoRA layers (an adapted encoder or a bare tower).
            unload: Also replace each LoRA layer by its (now merged) base layer, leaving plain ``nn.Linear`` layers.

        Returns:
            The number of LoRA layers merged.
        """
        layers = lora_layers(encoder)
        for name, layer in layers:
            if not layer.merged:
                layer.merge()
            if unload:
                parent_name, _, child_name = name.rpartition(".")
                parent = encoder.get_submodule(parent_name) if parent_name else encoder
                setattr(parent, child_name, layer.get_base_layer())
        return len(layers)
