"""The zero-shot lexicon table: mean ± std over stage-1 seeds of each setting's test metrics.

Run: ``.venv/bin/python benchmarks/zeroshot_lexicon_table.py results/zeroshot_lexicon/zeroshot_thyroid_lexicon``.

Reads ``<folder>/<setting>_seed<N>/test_metrics.json`` (one ``usvl test`` of ``configs/zeroshot/<organ>_lexicon.yaml``
per setting and stage-1 seed, as ``results/zeroshot_lexicon/command.sh`` writes them) and writes ``<folder>/table.md``
with a row per setting (a setting without seeds, ``no_stage1``, is one run) and a column per descriptor's kappa.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

SUMMARY = {
    "category κ (quadratic)": "test/category_kappa_quadratic", "points MAE": "test/points_mae",
    "AUROC of the expected points": "test/score_auroc", "zero-shot classifier AUROC": "test/classifier_auroc",
}
"""Columns after the per-descriptor kappas (and the multi-label descriptors' accuracy)."""


def columns(metrics: dict[str, float]) -> dict[str, str]:
    """The table's columns for a run's metrics: each descriptor's kappa, then :data:`SUMMARY`."""
    descriptors = [key[len("test/"):-len("_kappa")] for key in metrics
                   if key.endswith("_kappa") and not key.startswith("test/category_")]
    return {**{f"{name} κ": f"test/{name}_kappa" for name in descriptors}, **SUMMARY}


def cell(values: list[float]) -> str:
    """``mean ± std`` of several values, the value alone for one."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    """Write the table of the folder's runs."""
    folder = Path(sys.argv[1])
    settings: dict[str, list[dict[str, float]]] = {}
    for path in sorted(folder.glob("*/test_metrics.json")):
        setting = re.sub(r"_seed\d+$", "", path.parent.name)
        settings.setdefault(setting, []).append(json.loads(path.read_text())["metrics"])
    chosen = columns(next(iter(settings.values()))[0])
    lines = ["| setting | runs | " + " | ".join(chosen) + " |", "|---" * (len(chosen) + 2) + "|"]
    for setting, runs in settings.items():
        cells = [cell([run[key] for run in runs]) for key in chosen.values()]
        lines.append(f"| {setting} | {len(runs)} | " + " | ".join(cells) + " |")
    (folder / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
