"""ZeroShotLexiconTask: lexicon descriptors (ACR TI-RADS, BI-RADS) predicted from prompts, with nothing trained.

Each value of each descriptor has prompts (:meth:`usvl.lexicon.Lexicon.value_prompts`), in one of two modes:

* ``caption``: every lexicon caption (:attr:`usvl.lexicon.Lexicon.caption_template`, the wording stage 1 trains on
  with the synthetic twins) that has the value, the other descriptors taking every combination of their values;
* ``phrase``: a few short templates per descriptor filled with the value's words (``Thyroid nodule, hypoechoic.``).

The frozen text tower encodes each distinct prompt once, the (stage-1) text projection maps them into the joint
space, and their normalised mean is the value's prototype. An image's descriptor logits come from its scaled
cosine similarities with the prototypes:

* single-label descriptor (composition, ...): softmax over the values' similarities;
* multi-label descriptor (echogenic foci, calcifications), with its none value (``no echogenic foci``):
  ``multi_label: exclusive``, a softmax over the values and none (each prompt names one value, so at most one value
  reads as present); ``pairwise``, each value against none on its own,
  ``sigmoid(scale * (cos(image, value) - cos(image, none)))`` (any subset).

The class probabilities are those of :class:`~usvl.tasks.zeroshot.ZeroShotClassificationTask`. Test reports the
lexicon metrics of :class:`~usvl.tasks.lexicon.LexiconTask` (per-descriptor accuracy and kappa, category kappa, AUROC
of the expected points next to the zero-shot classifier's) and ``predict`` writes the same read-out. Without a
stage-1 checkpoint (``init_from``) the projections are random and so are the descriptors: run it after stage 1
(``usvl fit --config configs/pretrain_thyroid.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from usvl.data.intensity import IntensityStandardisation
from usvl.models.adapters.base import Adapter
from usvl.models.encoders.base import ImageFeatures, VisionLanguageEncoder
from usvl.tasks.base import StepOutput
from usvl.tasks.contrastive import CaptionEmbeddings
from usvl.tasks.lexicon import LexiconReadout
from usvl.tasks.zeroshot import ZeroShotClassificationTask


class ZeroShotLexiconTask(LexiconReadout, ZeroShotClassificationTask):
    """Zero-shot classification plus zero-shot lexicon descriptors from prompts per descriptor value; no training.

    Args:
        encoder: The vision-language encoder.
        num_classes: Number of classes (linked from the data module).
        class_names: Class names in label order (linked from the data module).
        lexicon: ``tirads`` or ``birads``.
        prompts: ``caption`` (the lexicon captions with the value, the other descriptors marginalised) or
            ``phrase`` (short templates per descriptor); see the module docstring.
        multi_label: How a multi-label descriptor's values are scored: ``exclusive`` or ``pairwise`` (see the
            module docstring).
        prompt_templates: ``phrase`` mode: per descriptor, templates with one ``{}`` for the value's phrase,
            replacing the lexicon's (:attr:`usvl.lexicon.Lexicon.prompt_templates`; descriptors not named keep theirs).
        adapter: The adapter of the stage-1 checkpoint (the same spec, so ``init_from`` fits).
        channels_last: Run convolutions in channels-last memory format.
        temperature: Temperature of the logits when no stage-1 temperature is loaded.
        test_time_flip: Average the probabilities (classes and descriptors) of each image and its mirror image.
        init_from: A stage-1 checkpoint: its adapters, projections and temperature.
        intensity_standardisation: Per-image grey-level standardisation before the encoder.
        feature_cache: The frozen-feature cache switch (see :class:`~usvl.tasks.zeroshot.ZeroShotClassificationTask`).

    Raises:
        KeyError: Unknown lexicon.
        ValueError: A prompt template names a descriptor the lexicon lacks or has no ``{}``, templates are given
            without ``prompts: phrase``, or ``multi_label`` is unknown.
    """

    needs_text_tower = True
    """The descriptor prompts are encoded by the text tower at the first batch: keep it loaded."""

    def __init__(
        self,
        encoder: VisionLanguageEncoder,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        lexicon: Literal["tirads", "birads"] = "tirads",
        prompts: Literal["caption", "phrase"] = "caption",
        multi_label: Literal["exclusive", "pairwise"] = "exclusive",
        prompt_templates: dict[str, list[str]] | None = None,
        adapter: Adapter | None = None,
        channels_last: bool = True,
        temperature: float = 0.01,
        test_time_flip: bool = False,
        init_from: str | None = None,
        intensity_standardisation: IntensityStandardisation = "none",
        feature_cache: bool | Literal["auto"] = "auto",
    ) -> None:
        super().__init__(encoder, num_classes, class_names, adapter, channels_last, temperature, test_time_flip,
                         init_from, intensity_standardisation, feature_cache)
        self.init_lexicon(lexicon)
        if prompt_templates and prompts != "phrase":
            raise ValueError("prompt_templates are the templates of the phrase prompts: set prompts to 'phrase' too "
                             "(--model.init_args.prompts phrase)")
        if multi_label not in ("exclusive", "pairwise"):
            raise ValueError(f"multi_label must be 'exclusive' or 'pairwise', got {multi_label!r}")
        self.multi_label = multi_label
        self.value_prompts = self.lexicon.value_prompts(prompt_templates, mode=prompts)
        self.prompt_embeddings = CaptionEmbeddings(encoder)
        self._prototypes: dict[str, torch.Tensor] | None = None

    def setup(self, stage: str) -> None:
        """Set up as the zero-shot classifier does (loading ``init_from``); prototypes are computed afresh."""
        super().setup(stage)
        self._prototypes = None

    def value_prototypes(self) -> dict[str, torch.Tensor]:
        """Per descriptor, unit prototypes ``[values, embed_dim]``: the normalised mean of each value's prompts.

        A multi-label descriptor's last row is its none value. Computed at the first call after :meth:`setup` (the
        projection does not change: nothing trains).
        """
        if self._prototypes is not None:
            return self._prototypes
        prototypes = {}
        for name, values in self.value_prompts.items():
            rows = []
            for prompts in values.values():
                projected = self.encoder.project_text(self.prompt_embeddings(prompts, self.device)).float()
                rows.append(F.normalize(F.normalize(projected, dim=-1).mean(dim=0), dim=-1))
            prototypes[name] = torch.stack(rows)
        self._prototypes = prototypes
        return prototypes

    def describe(self, features: ImageFeatures) -> dict[str, torch.Tensor]:
        """Descriptor logits from the scaled cosine similarities of the image embeddings with the value prototypes.

        Single-label: ``scale * cos(image, value)``. Multi-label, ``pairwise``: ``scale * (cos(image, value) -
        cos(image, none))``; ``exclusive``: the logit of each value's softmax share among the values and none.
        """
        image = F.normalize(features.global_embedding.float(), dim=-1)
        scale = self.logit_scale.exp()
        logits = {}
        for name, prototypes in self.value_prototypes().items():
            similarity = scale * image @ prototypes.t()
            if name in self.lexicon.single:
                logits[name] = similarity
            elif self.multi_label == "pairwise":
                logits[name] = similarity[:, :-1] - similarity[:, -1:]
            else:  # softmax over the values and none; the sigmoid of these logits gives each value's share back
                share = similarity.log_softmax(dim=-1)[:, :-1].clamp(max=-1e-6)
                logits[name] = share - torch.log(-torch.expm1(share))
        return logits

    def compute_step(self, batch: dict[str, Any], stage: str) -> StepOutput:
        """Class probabilities and their NLL, plus the descriptors' NLL (``<stage>/loss`` is the sum)."""
        output, lexicon_loss = self.evaluation_step(batch, stage)
        self.log_losses(stage, output, lexicon_loss, len(batch["label"]))
        output.loss = output.loss + lexicon_loss
        return output

