"""The zero-shot lexicon table: mean ± std over stage-1 seeds of each setting's test metrics.

Run: ``.venv/bin/python benchmarks/zeroshot_lexicon_table.py results/zeroshot_lexicon/zeroshot_thyroid_lexicon``.

Reads ``<folder>/<setting>_seed<N>/test_metrics.json`` (one ``usvl test`` of ``configs/zeroshot/thyroid_lexicon.yaml``
per setting and stage-1 seed, as ``results/zeroshot_lexicon/command.sh`` writes them) and writes ``<folder>/table.md``
with a row per setting; a setting without seeds (``no_stage1``) is one run.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

COLUMNS = {
    "composition κ": "test/composition_kappa", "echogenicity κ": "test/echogenicity_kappa",
    "shape κ": "test/shape_kappa", "margin κ": "test/margin_kappa", "echogenic foci κ": "test/echogenic_foci_kappa",
    "echogenic foci accuracy": "test/echogenic_foci_accuracy",
    "TR level κ (quadratic)": "test/category_kappa_quadratic",
    "points MAE": "test/points_mae", "AUROC of the expected points": "test/score_auroc",
    "zero-shot classifier AUROC": "test/classifier_auroc",
}


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
    lines = ["| setting | runs | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for setting, runs in settings.items():
        cells = [cell([run[key] for run in runs]) for key in COLUMNS.values()]
        lines.append(f"| {setting} | {len(runs)} | " + " | ".join(cells) + " |")
    (folder / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
