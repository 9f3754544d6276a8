"""Class descriptions and prompt-template ensembles, loaded from YAML files in ``configs/text/``.

A descriptions file holds lexicon-faithful sentences per class (``classes``) and, optionally, a prompt-template
ensemble: ``templates`` (strings with one ``{}``) combined with short ``phrases`` per class, CLIP style
("An ultrasound image of {}." x "a spongiform thyroid nodule"). The ensemble of a class is its sentences followed by
every template filled with every phrase of the class; the text tower encodes each and the prototypes average them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class ClassDescriptions:
    """Several phrasings per class plus their provenance.

    Attributes:
        classes: Mapping from class name to its full ensemble (sentences, then the template x phrase expansions).
        provenance: Where the text came from (author or model, prompt, settings, date).
        source: The file the descriptions were read from.
        sentences: The plain sentences of each class, before template expansion.
        templates: The prompt templates (each with one ``{}``); empty without an ensemble.
        phrases: Short class phrases the templates are filled with; empty without an ensemble.
    """

    classes: dict[str, list[str]]
    provenance: dict = field(default_factory=dict)
    source: str = ""
    sentences: dict[str, list[str]] = field(default_factory=dict)
    templates: list[str] = field(default_factory=list)
    phrases: dict[str, list[str]] = field(default_factory=dict)

    def for_classes(self, class_names: Sequence[str]) -> list[list[str]]:
        """Descriptions in the order of ``class_names``.

        Raises:
            KeyError: A class has no descriptions; the message names the file and the classes it has.
        """
        missing = [name for name in class_names if name not in self.classes]
        if missing:
            raise KeyError(
                f"No descriptions for classes {missing} in {self.source or 'the descriptions'}; "
                f"it describes {sorted(self.classes)}"
            )
        return [self.classes[name] for name in class_names]

    def with_refinements(self, refinements: Mapping[str, str], provenance: Mapping[str, Any] | None = None
                         ) -> tuple[ClassDescriptions, int]:
        """These descriptions with every sentence that has a refinement replaced by it.

        Only the plain sentences are refined (the template expansions are short prompts and stay as they are).

        Args:
            refinements: Source sentence -> refined sentence (see :func:`load_refinements`).
            provenance: Provenance of the refinement run, recorded under ``refinement``.

        Returns:
            The refined descriptions and the number of sentences replaced.
        """
        replaced = 0
        sentences: dict[str, list[str]] = {}
        for name, texts in (self.sentences or self.classes).items():
            sentences[name] = []
            for text in texts:
                refined = refinements.get(text, text)
                replaced += refined != text
                sentences[name].append(refined)
        classes = {name: sentences[name] + expand_templates(self.templates, self.phrases.get(name, []))
                   for name in sentences}
        merged = dict(self.provenance)
        if provenance:
            merged["refinement"] = json.dumps(dict(provenance), sort_keys=True, ensure_ascii=False)
        return replace(self, classes=classes, sentences=sentences, provenance=merged), replaced


def expand_templates(templates: Sequence[str], phrases: Sequence[str]) -> list[str]:
    """Every template filled with every phrase, phrase by phrase (``t1(p1), t2(p1), ..., t1(p2), ...``).

    A template's sentence-initial ``{}`` capitalises the phrase's first letter.
    """
    expanded = []
    for phrase in phrases:
        for template in templates:
            text = phrase[:1].upper() + phrase[1:] if template.startswith("{}") else phrase
            expanded.append(template.replace("{}", text, 1))
    return expanded


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(s, str) and s.strip() for s in value)


def load_descriptions(path: str | Path) -> ClassDescriptions:
    """Read a descriptions YAML, with or without a prompt-template ensemble.

    The file holds ``{provenance: {...}, classes: {name: [sentence, ...]}}`` and optionally an ensemble:
    ``templates: ["An ultrasound image of {}.", ...]`` with ``phrases: {name: [phrase, ...]}``.

    Relative paths are resolved against the working directory, then against the repository root.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file has no ``classes`` mapping, a class has no sentences, a template does not hold exactly
            one ``{}``, phrases are given without templates (or the reverse), or phrases name an unknown class.
    """
    resolved = resolve_config_path(path)
    data = yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}
    classes = data.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise ValueError(f"{resolved}: expected a non-empty 'classes' mapping of class name -> sentences")
    for name, sentences in classes.items():
        if not _string_list(sentences):
            raise ValueError(f"{resolved}: class '{name}' needs a non-empty list of sentences")
    templates = data.get("templates") or []
    phrases = data.get("phrases") or {}
    if templates or phrases:
        if not _string_list(templates) or not isinstance(phrases, dict) or not phrases:
            raise ValueError(f"{resolved}: a prompt ensemble needs both 'templates' (a list of strings with one "
                             "'{}') and 'phrases' (class name -> list of short phrases)")
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            raise ValueError(f"{resolved}: every template needs exactly one '{{}}'; these do not: {bad}")
        unknown = sorted(set(map(str, phrases)) - set(map(str, classes)))
        if unknown:
            raise ValueError(f"{resolved}: phrases for classes {unknown} that 'classes' does not describe")
        for name, values in phrases.items():
            if not _string_list(values):
                raise ValueError(f"{resolved}: phrases of class '{name}' need a non-empty list of strings")
    sentences = {str(k): [s.strip() for s in v] for k, v in classes.items()}
    templates = [t.strip() for t in templates]
    phrases = {str(k): [p.strip() for p in v] for k, v in phrases.items()}
    return ClassDescriptions(
        classes={name: texts + expand_templates(templates, phrases.get(name, [])) for name, texts in sentences.items()},
        provenance={str(k): str(v) for k, v in (data.get("provenance") or {}).items()},
        source=str(resolved),
        sentences=sentences,
        templates=templates,
        phrases=phrases,
    )


def load_refinements(path: str | Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Read the JSONL written by ``usvl text refine``: source sentence -> refined sentence, and its provenance.

    Lines whose refinement the guard rejected hold the source again as ``refined``, so they map to themselves.

    Returns:
        The mapping, and the run's provenance (file, refiner, model, date, counts).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not a JSON object with string ``source`` and ``refined``.
    """
    resolved = resolve_config_path(path)
    mapping: dict[str, str] = {}
    first: dict[str, Any] = {}
    accepted = 0
    for number, line in enumerate(resolved.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{resolved}:{number}: not JSON ({error}); expected `usvl text refine` output") from error
        if not isinstance(record, dict) or not isinstance(record.get("source"), str) \
                or not isinstance(record.get("refined"), str):
            raise ValueError(f"{resolved}:{number}: expected an object with 'source' and 'refined' strings")
        mapping[record["source"].strip()] = record["refined"].strip()
        accepted += bool(record.get("accepted", True))
        first = first or record
    provenance = {"file": str(resolved), "refiner": first.get("refiner"), "model": first.get("model"),
                  "date": first.get("date"), "lines": len(mapping), "accepted": accepted}
    return mapping, provenance


def resolve_config_path(path: str | Path) -> Path:
    """Resolve a path given in a config: as is, then relative to the repository root.

    Raises:
        FileNotFoundError: Neither location exists.
    """
    candidate = Path(path).expanduser()
    if candidate.exists():
        return candidate
    repo_root = Path(__file__).resolve().parents[2]
    if not candidate.is_absolute() and (repo_root / candidate).exists():
        return repo_root / candidate
    raise FileNotFoundError(f"{path} not found (also looked in {repo_root})")
