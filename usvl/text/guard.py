"""The findings guard: reject a refinement that contradicts the findings of its source text."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from usvl.text.findings import Finding, extract_findings


@dataclass(frozen=True)
class Verdict:
    """The guard's decision on one refinement.

    Attributes:
        accepted: The refinement keeps every finding of the source.
        reasons: Why it was rejected (empty when accepted).
    """

    accepted: bool
    reasons: list[str] = field(default_factory=list)


def _by_category(findings: set[Finding]) -> dict[str, set[Finding]]:
    grouped: dict[str, set[Finding]] = defaultdict(set)
    for finding in findings:
        grouped[finding.category].add(finding)
    return grouped


def _names(findings: set[Finding]) -> str:
    return ", ".join(finding.describe() for finding in sorted(findings)) or "nothing"


GENERIC_CATEGORY = "finding"
"""The lexicon category of the generic lesion words, which a refinement may add (unless the source is normal)."""


def check_refinement(source: str, refined: str) -> Verdict:
    """Compare the findings of ``refined`` with those of ``source``, category by category.

    For every lexicon category the source names (margin, echogenicity, ...), the refinement must state the same
    values with the same negation. A category's values that vanish are *dropped*; different or extra values are a
    *change*, reported as *malignant feature turned benign* when a suspicious source finding gives way to benign
    ones. A finding in a category the source does not mention is *added* and rejected too (the instruction asks
    for no new findings): a new assessment, reporting category, descriptor or calcification. The one exception is
    the generic lesion word (``mass``, ``nodule``, ``lesion``), which a paraphrase may add unless the source is
    normal.

    Args:
        source: The text that was refined.
        refined: The refiner's output.

    Returns:
        The verdict, with one reason per contradicted category.
    """
    if not refined.strip():
        return Verdict(False, ["empty refinement"])
    source_findings = _by_category(extract_findings(source))
    refined_findings = _by_category(extract_findings(refined))
    reasons = []
    for category in sorted(source_findings):
        before, after = source_findings[category], refined_findings.get(category, set())
        missing, extra = before - after, after - before
        if not missing and not extra:
            continue
        if not extra:
            reasons.append(f"dropped {category} {_names(missing)}")
        elif any(f.suspicious for f in missing) and not any(f.suspicious for f in after):
            reasons.append(f"malignant feature turned benign: {category} {_names(before)} -> {_names(after)}")
        else:
            reasons.append(f"changed {category}: {_names(before)} -> {_names(after)}")
    normal_source = Finding("assessment", "normal") in source_findings.get("assessment", set())
    for category in sorted(set(refined_findings) - set(source_findings)):
        if category == GENERIC_CATEGORY and not normal_source:
            continue
        reasons.append(f"added {category} {_names(refined_findings[category])}")
    return Verdict(not reasons, reasons)
