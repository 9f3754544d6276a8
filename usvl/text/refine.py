"""Refine texts with an LLM, once, with provenance: read texts, refine, guard the findings, write JSONL.

Each output line holds the source text, the refined text (the source again when the guard rejected the
refinement or the refiner failed), ``accepted`` and ``reasons``, the refiner and model (with the sha256 of local
weights, or the served model name for HTTP), the instruction, the generation settings and the date.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from usvl.text.guard import check_refinement
from usvl.text.refiners import Failure, OpenAIRefiner, Refiner, StaticRefiner, TransformersRefiner
from usvl.utils.atomic import write_text_atomic

log = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = (
    "You are a radiologist. Rewrite the ultrasound description you are given as one fluent sentence of a "
    "radiology report. Keep every finding exactly as stated: the same descriptors (composition, echogenicity, "
    "shape, orientation, margin, echogenic foci or calcifications, posterior features), the same negations and the "
    "same benign or malignant assessment. Add no new findings. Answer with the sentence only."
)
"""The refinement instruction used when no prompt file is given."""

REFINERS = {"static": StaticRefiner, "transformers": TransformersRefiner, "openai": OpenAIRefiner}
"""Refiner back-ends by name."""


@dataclass
class RefineSummary:
    """Counts of a refinement run and the rejected texts.

    Attributes:
        total: Texts refined.
        accepted: Refinements kept.
        rejections: ``{"index", "source", "refined", "reasons"}`` of each text that kept its source.
    """

    total: int = 0
    accepted: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        """Texts that kept their source text (guard rejection or refiner failure)."""
        return len(self.rejections)

    def format(self) -> str:
        """A short report: counts, then one line per rejection."""
        lines = [f"Refined {self.total} texts: {self.accepted} accepted, {self.rejected} rejected (source kept)"]
        lines += [f"  #{r['index']}: {'; '.join(r['reasons'])} | {r['source'][:80]}" for r in self.rejections]
        return "\n".join(lines)


def build_refiner(name: str, **options: Any) -> Refiner:
    """Construct a refiner by back-end name with its keyword options (``None`` values are left out).

    Raises:
        ValueError: Unknown back-end name.
    """
    if name not in REFINERS:
        raise ValueError(f"Unknown refiner {name!r}; choose one of {sorted(REFINERS)}")
    return REFINERS[name](**{k: v for k, v in options.items() if v is not None})


def load_texts(path: str | Path) -> list[dict[str, Any]]:
    """Read the texts to refine.

    Accepted inputs: JSONL (each line a string or an object with ``text`` and any other keys, kept in the
    output); YAML with a list of strings, ``texts: [...]``, or class descriptions (``classes: {name: [...]}``,
    as in ``configs/text/``: each sentence becomes ``{"text", "class"}``).

    Returns:
        One dict per text with at least ``text``.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file holds no texts or an entry has no text; the message names the file and entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Input texts {path} not found; give a .jsonl or .yaml file")
    if path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("classes"), dict):
            entries: list[Any] = [{"text": s, "class": str(name)} for name, sentences in data["classes"].items()
                                  for s in sentences or []]
        else:
            entries = data.get("texts") if isinstance(data, dict) else data
    else:
        entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: no texts found; expected JSONL lines, a YAML list, 'texts:' or 'classes:'")
    items = []
    for number, entry in enumerate(entries, start=1):
        item = {"text": entry} if isinstance(entry, str) else entry
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise ValueError(f"{path}: entry {number} has no 'text' string")
        items.append(item)
    return items


def refine_texts(items: list[dict[str, Any]], refiner: Refiner,
                 instruction: str = DEFAULT_INSTRUCTION) -> tuple[list[dict[str, Any]], RefineSummary]:
    """Refine every text, guard its findings and build the provenance records.

    Args:
        items: Texts as returned by :func:`load_texts`.
        refiner: The back-end.
        instruction: The refinement prompt.

    Returns:
        The output records (one per text, in order) and the run's summary.

    Raises:
        RuntimeError: The refiner failed on every text (nothing worth writing); the message has the first error.
    """
    sources = [item["text"] for item in items]
    outputs = refiner.generate(sources, instruction)
    if sources and all(isinstance(out, Failure) for out in outputs):
        raise RuntimeError(f"The {refiner.name} refiner failed on all {len(sources)} texts; first error: "
                           f"{outputs[0].message}")
    date = datetime.now(UTC).isoformat(timespec="seconds")
    model = refiner.model
    summary = RefineSummary(total=len(sources))
    records = []
    for index, (item, output) in enumerate(zip(items, outputs, strict=True)):
        if isinstance(output, Failure):
            accepted, reasons, candidate = False, [f"refiner failed: {output.message}"], None
        else:
            verdict = check_refinement(item["text"], output)
            accepted, reasons, candidate = verdict.accepted, verdict.reasons, output
        extra = {k: v for k, v in item.items() if k != "text"}
        records.append({**extra, "source": item["text"], "refined": candidate if accepted else item["text"],
                        "candidate": candidate, "accepted": accepted, "reasons": reasons,
                        "refiner": refiner.name, "model": model, "prompt": instruction,
                        "settings": refiner.settings, "date": date})
        if accepted:
            summary.accepted += 1
        else:
            summary.rejections.append({"index": index, "source": item["text"], "refined": candidate,
                                       "reasons": reasons})
    return records, summary


def exists_error(path: str | Path) -> FileExistsError:
    """The error for an output file that already exists (refinements are never overwritten)."""
    return FileExistsError(f"{path} exists; refinements are never overwritten: choose another --output")


def write_jsonl_new(path: str | Path, records: list[dict[str, Any]]) -> Path:
    """Write records as JSONL atomically, never over an existing file.

    The lines go to a temporary file beside ``path``, which is then hard-linked to ``path`` (fails if ``path``
    appeared meanwhile) and removed, so readers see either no file or the complete one.

    Raises:
        FileExistsError: ``path`` exists; choose another output name or delete the old file.
    """
    path = Path(path)
    if path.exists():
        raise exists_error(path)
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    try:
        return write_text_atomic(path, text, exclusive=True)
    except FileExistsError as error:
        raise exists_error(path) from error


def refine_file(input_path: str | Path, output_path: str | Path, refiner: Refiner,
                instruction: str = DEFAULT_INSTRUCTION) -> RefineSummary:
    """Refine the texts of ``input_path`` into a new JSONL file ``output_path``; logs and returns the summary.

    Raises:
        FileExistsError: ``output_path`` exists (checked before refining, and again when writing).
    """
    if Path(output_path).exists():
        raise exists_error(output_path)
    records, summary = refine_texts(load_texts(input_path), refiner, instruction)
    write_jsonl_new(output_path, records)
    log.info("%s; written to %s", summary.format(), output_path)
    return summary
