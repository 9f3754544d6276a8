"""The :class:`Lexicon`: descriptor vocabularies, a points table, categories and the one-sentence report.

A lexicon names the descriptors a reader reports for a lesion, each with a closed vocabulary, and turns them into a
score and a category. Two kinds of descriptor:

* **single** (one value per lesion, e.g. TI-RADS composition): predicted by a softmax head; the reported value is
  the most probable one.
* **multi** (any subset of values, e.g. TI-RADS echogenic foci; the empty set is :attr:`Lexicon.none_value`):
  predicted by one sigmoid per value; a value is reported when its probability is at least 0.5.

Points come from a table (descriptor -> value -> points); multi values add up, each value once. A ``gate`` value
(TI-RADS: spongiform composition) scores 0 in all and stops further points. The expected points of predicted
probabilities (:meth:`Lexicon.expected_points`) are the mean of the points under independent descriptors: an
interpretable malignancy score.

This package depends on nothing else in usvl (the generator, data modules, heads, metrics and writers import it).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

MISSING = ""
"""How a data batch marks an image without a descriptor value."""

MULTI_SEPARATORS = re.compile(r"[;,|+]")
"""Separators of several values of a multi descriptor in one manifest cell (``punctate;rim``)."""


def normalise_value(value: Any) -> str:
    """A descriptor value as the vocabularies spell it: lower case, spaces and hyphens as underscores.

    ``"Taller-than-wide"`` -> ``"taller_than_wide"``, ``"very hypoechoic"`` -> ``"very_hypoechoic"``; ``None`` and
    NaN -> ``""`` (missing).
    """
    if value is None or (isinstance(value, float) and value != value):
        return MISSING
    return re.sub(r"[\s\-]+", "_", str(value).strip().lower())


def join_values(values: Sequence[str] | str) -> str:
    """Several values of a multi descriptor in one cell (``a;b``), in the order given."""
    return values if isinstance(values, str) else ";".join(str(v) for v in values)


@dataclass(frozen=True)
class Lexicon:
    """A reporting lexicon: vocabularies, points, categories and phrases.

    Attributes:
        name: Registry key (``tirads``, ``birads``).
        title: Human name (``ACR TI-RADS``).
        single: Single-label descriptors and their values, in head order.
        multi: Multi-label descriptors and their values (without :attr:`none_value`), in head order.
        points_table: Points per descriptor value (the none value of a multi descriptor included).
        categories: Category names in increasing order of suspicion (for weighted kappa).
        category_of: Maps total points to a category name (one of :attr:`categories`).
        phrases: Words per descriptor value, for captions and the report sentence.
        sentence_of: ``(descriptors, points, category) -> sentence``.
        gate: ``(descriptor, value)`` that scores 0 in total and adds no further points (TI-RADS: spongiform).
        positive_class: The class name the points score predicts (``malignant``).
        no_finding_class: A class without a lesion (``normal`` for breast): predicted, the report says so.
        no_finding_category: The category reported for it.
        lesion: What the sentence calls the lesion (``nodule``, ``mass``).
        points_unit: What the points count, for the sentence (``points``, ``suspicious features``).
        prompt_templates: Per descriptor, sentence templates with one ``{}`` for a value's phrase: the zero-shot
            prompts of that descriptor's values (:meth:`value_prompts`, ``phrase`` mode).
        caption_template: A one-sentence caption of a lesion with a ``{<descriptor>}`` field per descriptor, filled
            with the values' phrases (:meth:`caption`): the synthetic generator's captions, and the zero-shot prompts
            of :meth:`value_prompts` in ``caption`` mode.
    """

    name: str
    title: str
    single: Mapping[str, tuple[str, ...]]
    multi: Mapping[str, tuple[str, ...]]
    points_table: Mapping[str, Mapping[str, int]]
    categories: tuple[str, ...]
    category_of: Callable[[int], str]
    phrases: Mapping[str, Mapping[str, str]]
    sentence_of: Callable[[Mapping[str, Any], int, str], str]
    gate: tuple[str, str] | None = None
    positive_class: str = "malignant"
    no_finding_class: str | None = None
    no_finding_category: str | None = None
    lesion: str = "lesion"
    points_unit: str = "points"
    none_value: str = "none"
    prompt_templates: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    caption_template: str | None = None
    _index: dict[str, dict[str, int]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, values in {**self.single, **self.multi}.items():
            self._index[name] = {value: i for i, value in enumerate(values)}

    @property
    def descriptors(self) -> tuple[str, ...]:
        """Every descriptor name: the single ones, then the multi ones."""
        return (*self.single, *self.multi)

    def head_sizes(self) -> dict[str, int]:
        """Outputs per descriptor head (values of a single descriptor, sigmoids of a multi descriptor)."""
        return {name: len(values) for name, values in {**self.single, **self.multi}.items()}

    # ------------------------------------------------------------------------------------------- values and points

    def parse(self, descriptor: str, value: Any) -> str | tuple[str, ...] | None:
        """A cell's value in the vocabulary: a value (single), a tuple of values (multi; empty: none), or None.

        Raises:
            ValueError: The value is not in the descriptor's vocabulary (the message lists it).
        """
        if descriptor in self.multi:
            if isinstance(value, list | tuple):
                parts = [normalise_value(v) for v in value]
            else:
                text = normalise_value(value)
                if text == MISSING:
                    return None
                parts = [normalise_value(p) for p in MULTI_SEPARATORS.split(text)]
            parts = [p for p in parts if p and p != self.none_value]
            unknown = [p for p in parts if p not in self._index[descriptor]]
            if unknown:
                raise ValueError(f"{self.title} {descriptor}: unknown values {unknown}; expected any of "
                                 f"{[self.none_value, *self.multi[descriptor]]}")
            return tuple(dict.fromkeys(parts))
        text = normalise_value(value)
        if text == MISSING:
            return None
        if text not in self._index[descriptor]:
            raise ValueError(f"{self.title} {descriptor}: unknown value {text!r}; expected one of "
                             f"{list(self.single[descriptor])}")
        return text

    def points(self, descriptors: Mapping[str, Any]) -> int:
        """Total points of one lesion's descriptors (all descriptors of the lexicon must be given).

        A multi descriptor may be one value (``"punctate"``), a list of values or :attr:`none_value`; each value
        counts once.
        """
        if self.gate is not None and descriptors[self.gate[0]] == self.gate[1]:
            return 0
        total = 0
        for name in self.single:
            total += self.points_table[name][descriptors[name]]
        for name in self.multi:
            value = descriptors[name]
            values = [value] if isinstance(value, str) else list(value)
            total += sum(self.points_table[name][v] for v in set(values))
        return int(total)

    def category(self, points: int) -> str:
        """The category of a points total."""
        return self.category_of(points)

    def category_index(self, category: str) -> int:
        """Position of a category in :attr:`categories` (its ordinal level)."""
        return self.categories.index(category)

    def expected_points(self, probabilities: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Expected points ``[B]`` of predicted descriptor probabilities, the descriptors taken as independent.

        Single descriptors contribute ``sum_v p_v * points_v``, multi descriptors ``sum_v sigmoid_v * points_v``
        (values add up). With a gate value ``g`` of descriptor ``G`` (which scores 0 and stops further points):
        ``E = E[points of G] + (1 - p_g) * E[points of the others]``. With one-hot probabilities this is
        :meth:`points` of those descriptors.

        Args:
            probabilities: Per descriptor, ``[B, values]`` (softmax of a single descriptor, sigmoids of a multi one).
        """
        import torch

        first = next(iter(probabilities.values()))
        gated = torch.zeros(first.shape[0], dtype=torch.float32, device=first.device)
        rest = torch.zeros_like(gated)
        for name in self.descriptors:
            table = torch.tensor([float(self.points_table[name][v]) for v in {**self.single, **self.multi}[name]],
                                 device=first.device)
            expected = probabilities[name].float() @ table
            if self.gate is not None and name == self.gate[0]:
                gated = gated + expected
            else:
                rest = rest + expected
        if self.gate is None:
            return gated + rest
        gate_probability = probabilities[self.gate[0]][:, self._index[self.gate[0]][self.gate[1]]].float()
        return gated + (1.0 - gate_probability) * rest

    def sentence(self, descriptors: Mapping[str, Any], points: int | None = None, category: str | None = None) -> str:
        """The one-sentence report of one lesion's descriptors (points and category computed when not given)."""
        points = self.points(descriptors) if points is None else points
        category = self.category(points) if category is None else category
        return self.sentence_of(descriptors, points, category)

    def phrase(self, descriptor: str, value: str | Sequence[str]) -> str:
        """The words of a descriptor value; several values of a multi descriptor joined (``a and b``; none if empty)."""
        if isinstance(value, str):
            return self.phrases[descriptor][value]
        values = [v for v in value if v != self.none_value] or [self.none_value]
        return join_phrases([self.phrases[descriptor][v] for v in values])

    def caption(self, descriptors: Mapping[str, Any]) -> str:
        """The lexicon caption of one lesion: :attr:`caption_template` filled with its descriptors' phrases.

        Raises:
            ValueError: The lexicon has no caption template.
        """
        if self.caption_template is None:
            raise ValueError(f"{self.title} has no caption template")
        return self.caption_template.format(**{name: self.phrase(name, descriptors[name])
                                               for name in self.descriptors})

    def value_prompts(self, templates: Mapping[str, Sequence[str]] | None = None,
                      mode: Literal["phrase", "caption"] = "phrase") -> dict[str, dict[str, list[str]]]:
        """Zero-shot prompts per descriptor value.

        A multi descriptor also gets its :attr:`none_value` (``no echogenic foci``), against which each of its
        values is scored.

        Args:
            templates: ``phrase`` mode: per descriptor, templates replacing :attr:`prompt_templates` (descriptors not
                named keep theirs).
            mode: ``phrase``: every template of the descriptor filled with the value's phrase (``Thyroid nodule,
                hypoechoic.``). ``caption``: every :meth:`caption` with that value, the other descriptors taking
                every combination of their values (one value or none for a multi descriptor): the whole-caption
                wording a stage-1 model was trained on, the other descriptors marginalised out.

        Returns:
            ``{descriptor: {value: [prompt, ...]}}`` in head order (single, then multi descriptors).

        Raises:
            ValueError: An unknown mode; ``phrase``: a descriptor has no template, one names a descriptor the
                lexicon lacks, or a template has no ``{}``; ``caption``: the lexicon has no caption template.
        """
        if mode == "caption":
            return self._caption_prompts()
        if mode != "phrase":
            raise ValueError(f"mode must be 'phrase' or 'caption', got {mode!r}")
        chosen = {**self.prompt_templates, **(templates or {})}
        unknown = sorted(set(chosen) - set(self.descriptors))
        if unknown:
            raise ValueError(f"prompt templates name {unknown}, which {self.title} lacks; its descriptors: "
                             f"{list(self.descriptors)}")
        prompts: dict[str, dict[str, list[str]]] = {}
        for name in self.descriptors:
            patterns = list(chosen.get(name) or [])
            if not patterns or any("{}" not in pattern for pattern in patterns):
                raise ValueError(f"{self.title} {name}: prompt templates must be a non-empty list of sentences with "
                                 f"one '{{}}' for the value's phrase, got {patterns}")
            prompts[name] = {value: [pattern.format(self.phrases[name][value]) for pattern in patterns]
                             for value in self.prompt_values(name)}
        return prompts

    def prompt_values(self, descriptor: str) -> tuple[str, ...]:
        """The values a descriptor's prompts describe: a single descriptor's, or a multi descriptor's plus none."""
        return (*self.multi[descriptor], self.none_value) if descriptor in self.multi else self.single[descriptor]

    def _caption_prompts(self) -> dict[str, dict[str, list[str]]]:
        if self.caption_template is None:
            raise ValueError(f"{self.title} has no caption template: use mode 'phrase'")
        prompts: dict[str, dict[str, list[str]]] = {}
        for name in self.descriptors:
            others = [other for other in self.descriptors if other != name]
            prompts[name] = {}
            for value in self.prompt_values(name):
                combinations = itertools.product(*(self.prompt_values(other) for other in others))
                prompts[name][value] = [self.caption({name: value, **dict(zip(others, combination, strict=True))})
                                        for combination in combinations]
        return prompts

    # ----------------------------------------------------------------------------------------------- training data

    def encode_targets(self, descriptors: Mapping[str, Sequence[Any]] | None, batch_size: int,
                       device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Training targets of a batch's descriptor strings (``batch["descriptors"]``), missing ones masked.

        Returns:
            Per descriptor: single, ``long [B]`` value index, -1 where missing; multi, ``float [B, values]`` 0/1,
            rows of -1 where missing. A descriptor absent from the batch is missing for every image.

        Raises:
            ValueError: A value is not in its vocabulary (the message names the descriptor and the value).
        """
        import torch

        descriptors = descriptors or {}
        targets: dict[str, torch.Tensor] = {}
        for name in self.single:
            column = descriptors.get(name) or [MISSING] * batch_size
            parsed = [self.parse(name, v) for v in column]
            targets[name] = torch.tensor([-1 if p is None else self._index[name][p] for p in parsed],
                                         dtype=torch.long, device=device)
        for name, values in self.multi.items():
            column = descriptors.get(name) or [MISSING] * batch_size
            rows = []
            for value in column:
                parsed = self.parse(name, value)
                rows.append([-1.0] * len(values) if parsed is None else [float(v in parsed) for v in values])
            targets[name] = torch.tensor(rows, dtype=torch.float32, device=device).reshape(batch_size, len(values))
        return targets

    def target_descriptors(self, targets: Mapping[str, torch.Tensor], index: int) -> dict[str, Any] | None:
        """One image's descriptors from encoded targets, or None when any descriptor is missing."""
        out: dict[str, Any] = {}
        for name, values in self.single.items():
            value = int(targets[name][index])
            if value < 0:
                return None
            out[name] = values[value]
        for name, values in self.multi.items():
            row = targets[name][index]
            if bool((row < 0).any()):
                return None
            out[name] = tuple(v for v, t in zip(values, row.tolist(), strict=True) if t > 0.5)
        return out

    # ------------------------------------------------------------------------------------------------- predictions

    def decide(self, probabilities: Mapping[str, Sequence[float]], threshold: float = 0.5) -> dict[str, Any]:
        """One lesion's reported descriptors: the most probable single values, multi values with ``p >= threshold``.

        Multi descriptors come back as tuples (empty: none).
        """
        out: dict[str, Any] = {}
        for name, values in self.single.items():
            row = list(probabilities[name])
            out[name] = values[max(range(len(values)), key=row.__getitem__)]
        for name, values in self.multi.items():
            out[name] = tuple(v for v, p in zip(values, probabilities[name], strict=True) if p >= threshold)
        return out

    def readout(self, probabilities: Mapping[str, Sequence[float]], expected_points: float | None = None,
                finding: bool = True) -> dict[str, Any]:
        """The read-out of one image: descriptors with probabilities, points, category, sentence.

        Args:
            probabilities: Per descriptor, the probabilities of its values (softmax or sigmoids).
            expected_points: The expected points (computed here when not given).
            finding: False when the classifier found no lesion (:attr:`no_finding_class`): the sentence says so
                and the category is :attr:`no_finding_category`; the descriptors are still reported.

        Returns:
            A JSON-ready dict: ``lexicon``, ``descriptors`` (single: ``value``, ``probability``, ``probabilities``;
            multi: ``values``, ``probabilities``), ``points``, ``expected_points``, ``category``, ``sentence``.
        """
        decided = self.decide(probabilities)
        if expected_points is None:
            import torch

            tensors = {k: torch.tensor([list(v)], dtype=torch.float32) for k, v in probabilities.items()}
            expected_points = float(self.expected_points(tensors)[0])
        descriptors: dict[str, Any] = {}
        for name, values in self.single.items():
            row = [float(p) for p in probabilities[name]]
            value = decided[name]
            descriptors[name] = {"value": value, "probability": round(row[values.index(value)], 6),
                                 "probabilities": {v: round(p, 6) for v, p in zip(values, row, strict=True)}}
        for name, values in self.multi.items():
            row = [float(p) for p in probabilities[name]]
            descriptors[name] = {"values": list(decided[name]) or [self.none_value],
                                 "probabilities": {v: round(p, 6) for v, p in zip(values, row, strict=True)}}
        points = self.points(decided)
        category = self.category(points)
        sentence = self.sentence(decided, points, category)
        if not finding and self.no_finding_category is not None:
            category = self.no_finding_category
            sentence = f"No focal {self.lesion}: {category}."
        return {"lexicon": self.title, "descriptors": descriptors, "points": points,
                "expected_points": round(float(expected_points), 6), "category": category, "sentence": sentence}


def join_phrases(parts: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    parts = [p for p in parts if p]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def capitalise(text: str) -> str:
    """The text with its first letter upper case (the rest unchanged)."""
    return text[:1].upper() + text[1:]


def plural(count: int, unit: str) -> str:
    """``1 point``, ``2 points`` (``unit`` is the plural)."""
    return f"{count} {unit[:-1] if count == 1 and unit.endswith('s') else unit}"
