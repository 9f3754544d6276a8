"""LoRA (low-rank adaptation) of the image tower, injected with peft.

Each targeted layer ``W`` (a frozen ``nn.Linear``) becomes ``W x + b + s · B A dropout(x)`` with trainable
``A ∈ R^{r×in}`` (Kaiming-uniform) and ``B ∈ R^{out×r}`` (zeros, so the adapted encoder equals the frozen one at step
0). The scaling is ``s = alpha / sqrt(r)`` with rsLoRA (``use_rslora=True``, as in the reference) and ``alpha / r``
otherwise.

Default targets come from the encoder (``VisionLanguageEncoder.lora_targets``), so ``adapter: LoRAAdapter`` works
on every backend without naming layers:

* timm ViTs (``timm+hf`` ViTs, open_clip's timm ``trunk`` as in BiomedCLIP): the fused ``attn.qkv``
  and the ``attn.proj`` Linear layers of every block, as the reference does: per block at width 768 and r=16 that is
  ``16·(768+2304) + 16·(768+768) = 73,728`` parameters, 884,736 over 12 blocks;
* open_clip's own (OpenAI-style) ``VisionTransformer``, the tiny test ViT-CLIP included: each block's
  ``nn.MultiheadAttention`` (peft's LoRA for it adapts the fused ``in_proj`` and the ``out_proj``: the same 73,728
  per block);
* transformers CLIP/SigLIP: ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` of every vision layer;
* CNN towers (the embedded EfficientNet-Lite0, timm CNNs): the ungrouped 1x1 convolutions (channel mixing).

Differences from the reference (``src/adapters/lora.py``), on purpose:

* Default ``alpha`` is 16 (scaling 4.0 at r=16); the reference uses α=32 (scaling 8.0). Set ``alpha=32`` to match.
* The biases of the wrapped layers stay frozen (the reference trains them in stage 1 without saving them).
* The text tower is never adapted.

"""

from __future__ import annotations

import re

from torch import nn

from usvl.models.adapters.base import Adapter
from usvl.models.encoders.base import VIT_ATTENTION_LORA_TARGETS, VisionLanguageEncoder
from usvl.models.encoders.common import match_targets
from usvl.models.fold_batch_norm import unfold_batch_norms

DEFAULT_LORA_TARGETS = VIT_ATTENTION_LORA_TARGETS
"""The ViT default (``attn.qkv``/``attn.proj`` of every block); each encoder names its own in ``lora_targets``."""

LORA_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
"""Layer types LoRA can adapt here."""


def _lora_layer_type() -> type[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return LoraLayer


def lora_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The peft LoRA layers inside ``module`` as ``(qualified name, layer)`` pairs, nested ones included."""
    layer_type = _lora_layer_type()
    return [(name, child) for name, child in module.named_modules() if isinstance(child, layer_type)]


def outermost(layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Drop LoRA layers nested inside another (peft's ``MultiheadAttention`` LoRA holds one on its ``out_proj``)."""
    return [(name, layer) for name, layer in layers if ".base_layer." not in f".{name}."]


class LoRAAdapter(Adapter):
    """Inject LoRA into layers of the image tower with peft; everything else stays as it was.

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
            suffixes. ``None`` uses the encoder's ``lora_targets`` (attention projections of ViTs, 1x1 convolutions
            of CNNs). Only ``nn.Linear``, ``nn.Conv2d`` and ``nn.MultiheadAttention`` layers inside the tower can be
            targets.
        use_rslora: Rank-stabilised scaling ``alpha / sqrt(r)`` (the reference's); ``False`` gives ``alpha / r``.
        tower: Qualified name of the image tower inside the encoder; ``None`` uses the encoder's
            ``image_tower_path``.

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
        tower: str | None = None,
    ) -> None:
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules if target_modules is None or isinstance(target_modules, str) \
            else list(target_modules)
        self.use_rslora = use_rslora
        self.tower = tower

    def resolve(self, encoder: nn.Module) -> tuple[str, str | list[str]]:
        """The tower path and target selection used on ``encoder`` (this adapter's, else the encoder's defaults)."""
        tower = self.tower or getattr(encoder, "image_tower_path", "image_tower")
        targets = self.target_modules
        if targets is None:
            targets = getattr(encoder, "lora_targets", DEFAULT_LORA_TARGETS)
        return tower, targets

    @staticmethod
    def describe_targets(targets: str | list[str]) -> str:
        """Targets as written in messages: ``regex <pattern>`` or the list of names."""
        if isinstance(targets, str):
            return f"regex {targets}"
        return f"names {', '.join(targets[:8])}{' ...' if len(targets) > 8 else ''}"

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
        tower_path, selection = self.resolve(encoder)
        try:
            tower = encoder.get_submodule(tower_path)
        except AttributeError:
            raise ValueError(f"LoRA: encoder {encoder_id} has no image tower '{tower_path}'") from None
        prefix = f"{tower_path}."
        matched = [name for name in match_targets(encoder, selection) if name.startswith(prefix)]
        if not matched:
            raise ValueError(
                f"LoRA target_modules ({self.describe_targets(selection)}) match no module of the image tower "
                f"'{tower_path}' of encoder {encoder_id} ({type(tower).__name__}). Pass target_modules naming layers "
                f"of '{tower_path}' (qualified names from the encoder root), or use another adapter."
            )
        unsupported = [
            f"{name} ({type(encoder.get_submodule(name)).__name__})"
            for name in matched
            if not isinstance(encoder.get_submodule(name), LORA_MODULE_TYPES)
        ]
        if unsupported:
            supported = ", ".join(t.__name__ for t in LORA_MODULE_TYPES)
            raise ValueError(
                f"LoRA target_modules ({self.describe_targets(selection)}) select layers of encoder {encoder_id} "
                f"that are not {supported}: {', '.join(unsupported[:5])}"
            )
        return matched

    def apply(self, encoder: VisionLanguageEncoder) -> list[nn.Module]:
        """Inject LoRA into the targeted layers of the image tower in place; return the peft LoRA layers.

        Raises:
            ValueError: No target matches (see :meth:`targets`), or the tower already holds LoRA layers.
        """
        from peft import LoraConfig, inject_adapter_in_model

        matched = self.targets(encoder)
        tower_path, _ = self.resolve(encoder)
        tower = encoder.get_submodule(tower_path)
        if lora_layers(tower):
            raise ValueError(f"The image tower of {getattr(encoder, 'encoder_id', '?')} already holds LoRA layers")
        relative = [name[len(tower_path) + 1 :] for name in matched]
        config = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules="|".join(re.escape(name) for name in relative),
            use_rslora=self.use_rslora,
            bias="none",
        )
        unfold_batch_norms(encoder)  # a batch norm folded into a convolution LoRA now wraps would skip the update
        inject_adapter_in_model(config, tower)
        layers = lora_layers(tower)
        injected = sorted(name for name, _ in outermost(layers))
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
        layers = outermost(lora_layers(encoder))
        for name, layer in layers:
            if unload and hasattr(layer, "unload_and_optionally_merge_module"):
                base = layer.unload_and_optionally_merge_module(merge=not layer.merged, safe_merge=False,
                                                                adapter_names=None)
            else:
                if not layer.merged:
                    layer.merge()
                base = layer.get_base_layer()
            if unload:
                parent_name, _, child_name = name.rpartition(".")
                parent = encoder.get_submodule(parent_name) if parent_name else encoder
                setattr(parent, child_name, base)
        unfold_batch_norms(encoder)  # merged convolutions may fold with their batch norms on the next forward
        return len(layers)
