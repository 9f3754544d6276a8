"""Class descriptions: lexicon-faithful sentences per class, loaded from YAML files in ``configs/text/``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass(frozen=True)
class ClassDescriptions:
    """Several phrasings per class plus their provenance.

    Attributes:
        classes: Mapping from class name to its descriptions.
        provenance: Where the text came from (author or model, prompt, settings, date).
        source: The file the descriptions were read from.
    """

    classes: dict[str, list[str]]
    provenance: dict = field(default_factory=dict)
    source: str = ""

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


def load_descriptions(path: str | Path) -> ClassDescriptions:
    """Read a descriptions YAML: ``{provenance: {...}, classes: {name: [sentence, ...]}}``.

    Relative paths are resolved against the working directory, then against the repository root.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file has no ``classes`` mapping or a class has no sentences.
    """
    resolved = resolve_config_path(path)
    data = yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}
    classes = data.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise ValueError(f"{resolved}: expected a non-empty 'classes' mapping of class name -> sentences")
    for name, sentences in classes.items():
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) for s in sentences):
            raise ValueError(f"{resolved}: class '{name}' needs a non-empty list of sentences")
    return ClassDescriptions(
        classes={str(k): [s.strip() for s in v] for k, v in classes.items()},
        provenance={str(k): str(v) for k, v in (data.get("provenance") or {}).items()},
        source=str(resolved),
    )


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
